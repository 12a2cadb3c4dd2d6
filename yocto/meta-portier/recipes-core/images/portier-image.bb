SUMMARY = "portier door-access appliance image for the Raspberry Pi 5 + Hailo-8"
DESCRIPTION = "A minimal systemd image that boots into portier: the portier service, \
ONNX Runtime, HailoRT with the Hailo-8 PCIe driver, firmware and multi-process service, the \
recognizer HEF when PORTIER_HEF_URI names one (portier-hef; CPU only without it), and an SSH \
server for field technicians (key login only)."
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
    portier-hef \
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

# Technicians log in with SSH keys. Put the public keys (one per line, as in
# authorized_keys) into PORTIER_ROOT_AUTHORIZED_KEYS in the kas file or local.conf; without
# keys, only the console on the HDMI port and a USB keyboard is available.
PORTIER_ROOT_AUTHORIZED_KEYS ??= ""
ROOTFS_POSTPROCESS_COMMAND += "portier_authorized_keys"

portier_authorized_keys() {
    if [ -n "${PORTIER_ROOT_AUTHORIZED_KEYS}" ]; then
        install -d -m 0700 ${IMAGE_ROOTFS}${ROOT_HOME}/.ssh
        printf '%s\n' "${PORTIER_ROOT_AUTHORIZED_KEYS}" > ${IMAGE_ROOTFS}${ROOT_HOME}/.ssh/authorized_keys
        chmod 0600 ${IMAGE_ROOTFS}${ROOT_HOME}/.ssh/authorized_keys
    fi
}

COMPATIBLE_MACHINE = "^raspberrypi5$"
