SUMMARY = "portier door-access appliance image for the Raspberry Pi 5 + Hailo-8"
DESCRIPTION = "A minimal systemd image that boots into portier: the portier service, \
ONNX Runtime, HailoRT with the Hailo-8 PCIe driver, firmware and multi-process service, the \
models the technician names (portier-models: detector, recognizer, liveness, the Hailo-8 HEF; \
CPU only without the HEF), the field guide, and an SSH server for field technicians (root by \
key only; a console password when one is given)."
LICENSE = "MIT"

inherit core-image

IMAGE_FEATURES += "ssh-server-openssh"
# No empty root password, no debug tweaks: this device controls a door.
IMAGE_FEATURES:remove = "debug-tweaks allow-empty-password empty-root-password"

# HailoRT's multi-process service (meta-hailo's hailort-service: hailort_service and its
# hailort.service unit), for [npu] multi_process_service = true. "0" leaves it out.
PORTIER_HAILORT_SERVICE ??= "1"

IMAGE_INSTALL = " \
    packagegroup-core-boot \
    ${CORE_IMAGE_EXTRA_INSTALL} \
    portier \
    portier-doc \
    portier-models \
    onnxruntime \
    libhailort \
    hailortcli \
    hailo-pci \
    hailo-firmware \
    ${@'hailort-service' if d.getVar('PORTIER_HAILORT_SERVICE') == '1' else ''} \
    kernel-modules \
    v4l-utils \
    libgpiod-tools \
    e2fsprogs-resize2fs \
"

# bmaptool flashes the .wic.bz2 with its .wic.bmap in a fraction of the time of dd.
IMAGE_FSTYPES = "wic.bz2 wic.bmap"

# Room for the gallery, the MQTT outbox and the journal beyond the packages (in KiB).
IMAGE_ROOTFS_EXTRA_SPACE = "524288"

# Who can log in. A door controller has no default password and no empty one, so the build
# refuses to parse unless it is given at least one way in (yocto/README.md, "Log in"):
#   PORTIER_ROOT_AUTHORIZED_KEYS: public keys as in authorized_keys, any number, one after the
#     other (a value may continue over lines with a trailing backslash); plain keys only.
#   PORTIER_ROOT_AUTHORIZED_KEYS_FILE: an authorized_keys file on the build host (absolute path;
#     any number of keys, with options).
#   PORTIER_ROOT_PASSWORD_HASH: root's password as a crypt(3) hash, for the console on the HDMI
#     port with a USB keyboard (SSH never accepts root's password): make it with
#     `openssl passwd -6` or `mkpasswd -m yescrypt`. Expired at first login unless
#     PORTIER_ROOT_PASSWORD_EXPIRE = "0", so each device's password is its technician's own.
PORTIER_ROOT_AUTHORIZED_KEYS ??= ""
PORTIER_ROOT_AUTHORIZED_KEYS_FILE ??= ""
PORTIER_ROOT_PASSWORD_HASH ??= ""
PORTIER_ROOT_PASSWORD_EXPIRE ??= "1"

PORTIER_SSH_KEY_TYPES = "ssh-ed25519 ssh-rsa ecdsa-sha2-nistp256 ecdsa-sha2-nistp384 \
    ecdsa-sha2-nistp521 sk-ssh-ed25519@openssh.com sk-ecdsa-sha2-nistp256@openssh.com"

def portier_split_keys(d):
    """The keys of PORTIER_ROOT_AUTHORIZED_KEYS, one line each; bb.fatal on anything else."""
    import base64, binascii, struct
    types = d.getVar('PORTIER_SSH_KEY_TYPES').split()
    keys = []
    for word in (d.getVar('PORTIER_ROOT_AUTHORIZED_KEYS') or '').split():
        if word in types:
            keys.append([word])
        elif not keys:
            bb.fatal("PORTIER_ROOT_AUTHORIZED_KEYS must start with a key type (%s), got '%s'; "
                     "keys with options go into PORTIER_ROOT_AUTHORIZED_KEYS_FILE"
                     % (', '.join(types), word))
        else:
            keys[-1].append(word)
    for key in keys:
        try:
            blob = base64.b64decode(key[1], validate=True) if len(key) > 1 else b''
            (n,) = struct.unpack('>I', blob[:4])
            inner = blob[4:4 + n].decode()
        except (binascii.Error, struct.error, UnicodeDecodeError):
            inner = None
        if inner != key[0]:
            bb.fatal("PORTIER_ROOT_AUTHORIZED_KEYS: '%s' is not a %s public key (the base64 "
                     "part is missing, cut or of another type)" % (' '.join(key)[:60], key[0]))
    return [' '.join(k) for k in keys]

python () {
    import re
    keys = portier_split_keys(d)
    keyfile = d.getVar('PORTIER_ROOT_AUTHORIZED_KEYS_FILE')
    pw = d.getVar('PORTIER_ROOT_PASSWORD_HASH')
    if not keys and not keyfile and not pw:
        bb.fatal("portier-image: nobody could log in to this image. Set at least one of "
                 "PORTIER_ROOT_AUTHORIZED_KEYS (SSH public keys), "
                 "PORTIER_ROOT_AUTHORIZED_KEYS_FILE (an authorized_keys file) or "
                 "PORTIER_ROOT_PASSWORD_HASH (console password, from `openssl passwd -6`) "
                 "in the kas file's local_conf_header or local.conf (yocto/README.md, 'Log in')")
    if keyfile:
        if not os.path.isabs(keyfile) or not os.path.isfile(keyfile):
            bb.fatal("PORTIER_ROOT_AUTHORIZED_KEYS_FILE: '%s' is not an absolute path to a file"
                     % keyfile)
        d.appendVarFlag('do_rootfs', 'file-checksums', ' %s:True' % keyfile)
    if pw and not re.fullmatch(r'\$(6|5|y|gy|7|2[aby])\$[./0-9A-Za-z$=,-]+', pw):
        bb.fatal("PORTIER_ROOT_PASSWORD_HASH must be a crypt(3) hash such as `openssl passwd -6` "
                 "prints ($6$...), never the password itself")
}

ROOTFS_POSTPROCESS_COMMAND += "portier_root_login"

python portier_root_login () {
    import os
    rootfs = d.getVar('IMAGE_ROOTFS')
    lines = portier_split_keys(d)
    keyfile = d.getVar('PORTIER_ROOT_AUTHORIZED_KEYS_FILE')
    if keyfile:
        with open(keyfile) as f:
            lines += [l.rstrip('\n') for l in f if l.strip() and not l.startswith('#')]
    if lines:
        ssh = os.path.join(rootfs + d.getVar('ROOT_HOME'), '.ssh')
        os.makedirs(ssh, mode=0o700, exist_ok=True)
        os.chmod(ssh, 0o700)
        path = os.path.join(ssh, 'authorized_keys')
        with open(path, 'w') as f:
            f.write('\n'.join(lines) + '\n')
        os.chmod(path, 0o600)
    pw = d.getVar('PORTIER_ROOT_PASSWORD_HASH')
    if pw:
        shadow = os.path.join(rootfs, 'etc/shadow')
        with open(shadow) as f:
            entries = f.read().splitlines()
        for i, line in enumerate(entries):
            fields = line.split(':')
            if fields[0] == 'root':
                fields[1] = pw
                # Last change 0: the password must be changed at the first login.
                if d.getVar('PORTIER_ROOT_PASSWORD_EXPIRE') == '1':
                    fields[2] = '0'
                entries[i] = ':'.join(fields)
                break
        else:
            bb.fatal("portier_root_login: no root entry in %s" % shadow)
        with open(shadow, 'w') as f:
            f.write('\n'.join(entries) + '\n')
}
portier_root_login[vardeps] += "PORTIER_ROOT_AUTHORIZED_KEYS PORTIER_ROOT_AUTHORIZED_KEYS_FILE \
    PORTIER_ROOT_PASSWORD_HASH PORTIER_ROOT_PASSWORD_EXPIRE"

COMPATIBLE_MACHINE = "^raspberrypi5$"
