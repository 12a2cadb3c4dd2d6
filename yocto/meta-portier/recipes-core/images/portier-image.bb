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
IMAGE_FEATURES:remove = "debug-tweaks allow-empty-password empty-root-password allow-root-login"

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

# Who can log in. A door controller has no default password and no empty one, so the image
# recipe is skipped at parse, with a message naming these variables, unless it is given at least
# one way in (yocto/README.md, "Log in"):
#   PORTIER_ROOT_AUTHORIZED_KEYS: public keys as in authorized_keys, any number, one after the
#     other (a value may continue over lines with a trailing backslash); plain keys only.
#   PORTIER_ROOT_AUTHORIZED_KEYS_FILE: an authorized_keys file on the build host (absolute path;
#     any number of keys, with options).
#   PORTIER_ROOT_PASSWORD_HASH: root's password as a crypt(3) hash, for the console on the HDMI
#     port with a USB keyboard (SSH never accepts a password: sshd_config is set so below):
#     `openssl passwd -6` or `mkpasswd -m yescrypt`. Expired, so the first console login asks
#     for a new one, unless PORTIER_ROOT_PASSWORD_EXPIRE = "0".
# Every key is parsed in full (type, key material, RSA >= 2048 bits) and every hash's shape is
# checked: a typo must not yield an image nobody can log in to.
PORTIER_ROOT_AUTHORIZED_KEYS ??= ""
PORTIER_ROOT_AUTHORIZED_KEYS_FILE ??= ""
PORTIER_ROOT_PASSWORD_HASH ??= ""
PORTIER_ROOT_PASSWORD_EXPIRE ??= "1"

def portier_key_problem(keytype, b64):
    """None when b64 is a well-formed OpenSSH public key of keytype, else what is wrong."""
    import base64, binascii
    try:
        blob = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        return 'the key part is not base64'
    fields, at = [], 0
    while at < len(blob):
        if at + 4 > len(blob):
            return 'the key is cut short'
        n = int.from_bytes(blob[at:at + 4], 'big')
        if at + 4 + n > len(blob):
            return 'the key is cut short'
        fields.append(blob[at + 4:at + 4 + n])
        at += 4 + n
    if not fields or fields[0] != keytype.encode():
        return 'its key part is not a %s key' % keytype
    curve = keytype.split('@')[0].rsplit('-', 1)[-1]
    point = {'nistp256': 65, 'nistp384': 97, 'nistp521': 133}.get(curve)
    shapes = {
        'ssh-ed25519': lambda f: len(f) == 2 and len(f[1]) == 32,
        'sk-ssh-ed25519@openssh.com': lambda f: len(f) == 3 and len(f[1]) == 32,
        'ssh-rsa': lambda f: len(f) == 3 and len(f[2].lstrip(b'\0')) * 8 >= 2048,
        'ecdsa-sha2-nistp256': None, 'ecdsa-sha2-nistp384': None, 'ecdsa-sha2-nistp521': None,
        'sk-ecdsa-sha2-nistp256@openssh.com': None,
    }
    if keytype not in shapes:
        return 'unknown key type'
    shape = shapes[keytype] or (lambda f: len(f) == (4 if keytype.startswith('sk-') else 3)
                                and f[1] == curve.encode() and len(f[2]) == point
                                and f[2][:1] == b'\x04')
    if not shape(fields):
        return 'the key material is missing, cut or not a %s key%s' % (
            keytype, ' of 2048 bits or more' if keytype == 'ssh-rsa' else '')
    material = fields[2] if keytype == 'ssh-rsa' or keytype.startswith(('ecdsa', 'sk-ecdsa')) else fields[1]
    if len(set(material.lstrip(b'\x04'))) <= 1:
        return 'the key material is a placeholder (one byte repeated)'
    return None

def portier_keys(d):
    """Every key to install as (authorized_keys line, index of its key type among the line's
    words), and what is wrong with the rest."""
    types = ('ssh-ed25519', 'ssh-rsa', 'ecdsa-sha2-nistp256', 'ecdsa-sha2-nistp384',
             'ecdsa-sha2-nistp521', 'sk-ssh-ed25519@openssh.com',
             'sk-ecdsa-sha2-nistp256@openssh.com')
    lines, problems = [], []
    keys = []
    for word in (d.getVar('PORTIER_ROOT_AUTHORIZED_KEYS') or '').split():
        if word in types:
            keys.append([word])
        elif not keys:
            problems.append("PORTIER_ROOT_AUTHORIZED_KEYS must start with a key type (%s), got "
                            "'%s'; keys with options go into PORTIER_ROOT_AUTHORIZED_KEYS_FILE"
                            % (', '.join(types), word[:40]))
            break
        else:
            keys[-1].append(word)
    for key in keys:
        why = portier_key_problem(key[0], key[1]) if len(key) > 1 else 'the key part is missing'
        if why:
            problems.append("PORTIER_ROOT_AUTHORIZED_KEYS: '%s': %s" % (' '.join(key)[:60], why))
        else:
            lines.append((' '.join(key), 0))
    keyfile = d.getVar('PORTIER_ROOT_AUTHORIZED_KEYS_FILE')
    if keyfile:
        if not os.path.isabs(keyfile) or not os.path.isfile(keyfile):
            problems.append("PORTIER_ROOT_AUTHORIZED_KEYS_FILE: '%s' is not an absolute path to "
                            "a file" % keyfile)
        else:
            bb.parse.mark_dependency(d, keyfile)
            with open(keyfile, encoding='utf-8', errors='replace') as f:
                for number, line in enumerate(f, 1):
                    line = line.strip()
                    if not line or line.startswith('#'):
                        continue
                    words = line.split()
                    at = next((i for i, w in enumerate(words) if w in types), None)
                    why = ('no key type (%s)' % ', '.join(types) if at is None
                           else 'the key part is missing' if at + 1 >= len(words)
                           else portier_key_problem(words[at], words[at + 1]))
                    if why:
                        problems.append("PORTIER_ROOT_AUTHORIZED_KEYS_FILE %s line %d: %s"
                                        % (keyfile, number, why))
                    else:
                        lines.append((line, at))
    return lines, problems

def portier_password_problem(pw):
    """None when pw looks like a crypt(3) hash of a scheme the image's shadow understands."""
    import re
    salt, b64 = r'[./0-9A-Za-z]', r'[./0-9A-Za-z]'
    shapes = (r'\$6\$(rounds=\d+\$)?%s{1,16}\$%s{86}' % (salt, b64),
              r'\$5\$(rounds=\d+\$)?%s{1,16}\$%s{43}' % (salt, b64),
              r'\$y\$[./0-9A-Za-z]+\$%s{1,86}\$%s{43}' % (salt, b64),
              r'\$2[aby]\$\d\d\$%s{53}' % b64)
    if any(re.fullmatch(p, pw) for p in shapes):
        return None
    return ("PORTIER_ROOT_PASSWORD_HASH must be a whole crypt(3) hash ($6$ or $5$ from "
            "`openssl passwd -6`/`-5`, $y$ from `mkpasswd -m yescrypt`, $2b$), never the "
            "password itself: got %d characters starting '%s'" % (len(pw), pw[:3]))

python () {
    lines, problems = portier_keys(d)
    pw = d.getVar('PORTIER_ROOT_PASSWORD_HASH')
    if pw:
        why = portier_password_problem(pw)
        if why:
            problems.append(why)
    if d.getVar('PORTIER_ROOT_PASSWORD_EXPIRE') not in ('0', '1'):
        problems.append("PORTIER_ROOT_PASSWORD_EXPIRE must be \"1\" (the first console login "
                        "asks for a new password) or \"0\", got '%s'"
                        % d.getVar('PORTIER_ROOT_PASSWORD_EXPIRE'))
    if problems:
        raise bb.parse.SkipRecipe('; '.join(problems))
    if not lines and not pw:
        raise bb.parse.SkipRecipe(
            "portier-image: nobody could log in to this image. Set at least one of "
            "PORTIER_ROOT_AUTHORIZED_KEYS (SSH public keys), PORTIER_ROOT_AUTHORIZED_KEYS_FILE "
            "(an authorized_keys file) or PORTIER_ROOT_PASSWORD_HASH (console password, from "
            "`openssl passwd -6`) in the kas file's local_conf_header or local.conf "
            "(yocto/README.md, 'Log in')")
    keyfile = d.getVar('PORTIER_ROOT_AUTHORIZED_KEYS_FILE')
    if keyfile:
        d.appendVarFlag('do_rootfs', 'file-checksums', ' %s:True' % keyfile)
}

# The image's test data (write_image_test_data) would copy every variable, the password hash
# among them, into the deploy folder; this image has no oeqa runtime tests to feed.
ROOTFS_POSTPROCESS_COMMAND:remove = "write_image_test_data"
ROOTFS_POSTPROCESS_COMMAND += "portier_root_login"

python portier_root_login () {
    import base64, hashlib, os, re
    rootfs = d.getVar('IMAGE_ROOTFS')
    lines, problems = portier_keys(d)
    if problems:
        bb.fatal('; '.join(problems))
    summary = []
    if lines:
        ssh = os.path.join(rootfs + d.getVar('ROOT_HOME'), '.ssh')
        os.makedirs(ssh, mode=0o700, exist_ok=True)
        os.chmod(ssh, 0o700)
        path = os.path.join(ssh, 'authorized_keys')
        with open(path, 'w') as f:
            f.write('\n'.join(line for line, _ in lines) + '\n')
        os.chmod(path, 0o600)
        for line, at in lines:
            words = line.split()
            digest = hashlib.sha256(base64.b64decode(words[at + 1])).digest()
            summary.append('root key %s SHA256:%s %s' % (
                words[at], base64.b64encode(digest).decode().rstrip('='), ' '.join(words[at + 2:])))
    pw = d.getVar('PORTIER_ROOT_PASSWORD_HASH')
    if pw:
        shadow = os.path.join(rootfs, 'etc/shadow')
        with open(shadow) as f:
            entries = f.read().splitlines()
        for i, line in enumerate(entries):
            fields = line.split(':')
            if fields[0] == 'root':
                fields[1] = pw
                # Last change 0: the password must be changed at the next (first) login.
                if d.getVar('PORTIER_ROOT_PASSWORD_EXPIRE') == '1':
                    fields[2] = '0'
                entries[i] = ':'.join(fields)
                break
        else:
            bb.fatal("portier_root_login: no root entry in %s" % shadow)
        with open(shadow, 'w') as f:
            f.write('\n'.join(entries) + '\n')
        summary.append('root console password: set%s' % (
            ', expired (changed at the first console login)'
            if d.getVar('PORTIER_ROOT_PASSWORD_EXPIRE') == '1' else ''))
    # sshd: root by key only, no passwords at all, whatever IMAGE_FEATURES or a later
    # OpenSSH default would allow.
    for name in ('sshd_config', 'sshd_config_readonly'):
        config = os.path.join(rootfs, d.getVar('sysconfdir').lstrip('/'), 'ssh', name)
        if not os.path.exists(config):
            continue
        with open(config) as f:
            text = f.read()
        # sshd takes the first value of a keyword: portier's lines go first, and any other
        # line setting them (allow-root-login's "PermitRootLogin yes") is commented out.
        keys = ('PermitRootLogin', 'PasswordAuthentication', 'KbdInteractiveAuthentication')
        text = re.sub(r'^(\s*(%s)\b)' % '|'.join(keys), r'# (portier) \1', text, flags=re.M)
        text = ('# portier-image: root logs in by key only; no password logins over SSH.\n'
                'PermitRootLogin prohibit-password\nPasswordAuthentication no\n'
                'KbdInteractiveAuthentication no\n\n' + text)
        with open(config, 'w') as f:
            f.write(text)
    # Who can log in, beside the image: a key added by a tampered configuration shows here.
    deploy = d.getVar('IMGDEPLOYDIR')
    os.makedirs(deploy, exist_ok=True)
    with open(os.path.join(deploy, d.getVar('IMAGE_NAME') + '.logins.txt'), 'w') as f:
        f.write('\n'.join(summary) + '\n')
}
portier_root_login[vardeps] += "PORTIER_ROOT_AUTHORIZED_KEYS PORTIER_ROOT_AUTHORIZED_KEYS_FILE \
    PORTIER_ROOT_PASSWORD_HASH PORTIER_ROOT_PASSWORD_EXPIRE"

COMPATIBLE_MACHINE = "^raspberrypi5$"
