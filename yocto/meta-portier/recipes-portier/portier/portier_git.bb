SUMMARY = "portier: face-recognition door access"
DESCRIPTION = "One Rust binary that finds faces in a camera stream, embeds them on a Hailo-8 \
NPU or on the CPU (ONNX Runtime), matches them against an enrolled gallery, pulses the door \
relay, drives a status display and reports to Home Assistant over MQTT; with its hardened \
systemd unit, system user, udev rules and board files for a Raspberry Pi 5."
HOMEPAGE = "https://example.invalid/portier"
BUGTRACKER = "https://example.invalid/portier/issues"
SECTION = "security"
# portier itself is Apache-2.0; the crates linked into the binary (portier-crates.inc) are
# MIT/Apache-2.0 dual-licensed (MIT chosen), Zlib, ISC, BSD-3-Clause, Unicode-3.0, and
# libjpeg-turbo (IJG & Zlib & BSD-3-Clause, vendored by mozjpeg-sys); SQLite is public domain.
LICENSE = "Apache-2.0 & MIT & Zlib & ISC & BSD-3-Clause & IJG & Unicode-3.0"
LIC_FILES_CHKSUM = "file://Cargo.toml;beginline=7;endline=7;md5=2507bd5f0713f05419cd2f22fa06fe62"

# Release builds fetch a pinned commit of the portier repository (set PORTIER_GIT_URI and
# SRCREV in the kas file or local.conf). Development builds take the checkout that contains
# this layer instead, through externalsrc (yocto/kas/portier-pi5.yml does this by default).
# libclang for bindgen (see LIBCLANG_PATH below), only with the v4l2 feature: clang-native is a
# long build of its own.
DEPENDS = "${@bb.utils.contains_any('PORTIER_FEATURES', 'v4l2 pi5', 'clang-native', '', d)}"

PV = "0.1.0+git"
PORTIER_GIT_URI ?= "git://example.invalid/portier.git;protocol=https;branch=main"
SRC_URI = "${PORTIER_GIT_URI}"
SRCREV = "0000000000000000000000000000000000000000"

S = "${WORKDIR}/git"

# Every crate from Cargo.lock, fetched by bitbake and built offline. Regenerate with
# scripts/gen-crates-inc after any Cargo.lock change (CI checks that it matches).
require ${BPN}-crates.inc

# The Rust project's release toolchain through meta-rust-bin (cargo_bin class): scarthgap's own
# Rust is 1.75. useradd: the portier user and its device groups must exist when the image is
# assembled (udev rules and tmpfiles name them at first boot); the sysusers.d file is installed
# as well so the system describes itself. systemd: enable the unit.
inherit cargo_bin systemd useradd

# The oldest Rust that builds portier: Cargo.toml's rust-version. Checked twice: at parse against
# the Cargo.toml of the repository this layer lives in (yocto/meta-portier), so a too-old
# toolchain is named before hours of building; and before configuring, against the source being
# built (${S}/Cargo.toml), which differs from the layer's in a release build (PORTIER_GIT_URI).
def portier_cargo_rust_version(path):
    import re
    try:
        with open(path) as f:
            m = re.search(r'^rust-version\s*=\s*"([0-9.]+)"', f.read(), re.M)
    except OSError:
        return ''
    return m.group(1) if m else ''

def portier_rust_floor_problem(d, need, where):
    """None when the toolchain is at least `need`, else the message."""
    def version(v):
        return tuple(int(x) for x in v.split('.') if x.isdigit())
    arch = d.getVar('TARGET_ARCH')
    have = (d.getVar('PREFERRED_VERSION_rust-bin-cross-%s' % arch) or '').rstrip('%')
    if not have:
        return ("portier: PREFERRED_VERSION_rust-bin-cross-%s is not set: set "
                "PORTIER_RUST_VERSION (meta-portier's layer.conf) to a Rust release that "
                "meta-rust-bin has, at least %s" % (arch, need))
    if version(have) < version(need):
        return ("portier needs Rust >= %s (rust-version in %s) but the toolchain is %s "
                "(PORTIER_RUST_VERSION / PREFERRED_VERSION_rust-bin-cross-%s): set "
                "PORTIER_RUST_VERSION to a newer meta-rust-bin release" % (need, where, have, arch))
    return None

python () {
    cargo_toml = os.path.normpath(os.path.join(d.getVar('FILE_DIRNAME'), '../../../../Cargo.toml'))
    bb.parse.mark_dependency(d, cargo_toml)
    need = d.getVar('PORTIER_RUST_MIN') or portier_cargo_rust_version(cargo_toml)
    if not need:
        raise bb.parse.SkipRecipe("portier: cannot read rust-version from %s (the Cargo.toml "
                                  "of the repository holding yocto/meta-portier); set "
                                  "PORTIER_RUST_MIN" % cargo_toml)
    why = portier_rust_floor_problem(d, need, cargo_toml)
    if why:
        raise bb.parse.SkipRecipe(why)
}
# Set to override the layer's Cargo.toml (a layer copied out of its repository).
PORTIER_RUST_MIN ??= ""

python portier_check_source_rust_version () {
    path = os.path.join(d.getVar('S'), 'Cargo.toml')
    need = portier_cargo_rust_version(path)
    why = need and portier_rust_floor_problem(d, need, path)
    if why:
        bb.fatal(why)
}
do_configure[prefuncs] += "portier_check_source_rust_version"

# No default features: each hardware backend is a Cargo feature of its own; name the ones the
# appliance needs: `pi5` = hailo, v4l2, gpio-cdev, display-fb, display-spi (Cargo.toml).
PORTIER_FEATURES ??= "pi5"
CARGO_FEATURES = "${PORTIER_FEATURES}"
# Exactly Cargo.lock's versions, from the crates bitbake fetched; never the network.
EXTRA_CARGO_FLAGS = "--frozen"
# No build-host paths in the binary (reproducible; no buildpaths QA warning).
EXTRA_RUSTFLAGS = "--remap-path-prefix=${CARGO_HOME}=/usr/src/debug/cargo \
                   --remap-path-prefix=${S}=/usr/src/debug/portier \
                   --remap-path-prefix=${WORKDIR}=/usr/src/debug/portier-work"

# The crates fetched by bitbake (crate://, portier-crates.inc) are unpacked into
# ${CARGO_HOME}/bitbake with their checksums; cargo takes crates.io from there.
do_configure:append() {
    cat > ${CARGO_HOME}/config.toml <<EOF
[source.bitbake]
directory = "${CARGO_HOME}/bitbake"

[source.crates-io]
replace-with = "bitbake"

[net]
offline = true
EOF
}

# bindgen (v4l2-sys-mit, for the v4l2 feature) needs libclang: clang-native from meta-clang
# (DEPENDS above), never the build host's. It must read the target's kernel headers, not the
# host's.
export LIBCLANG_PATH = "${STAGING_LIBDIR_NATIVE}"
export BINDGEN_EXTRA_CLANG_ARGS = "--sysroot=${STAGING_DIR_TARGET} --target=${RUST_TARGET}"

USERADD_PACKAGES = "${PN}"
GROUPADD_PARAM:${PN} = "--system gpio; --system hailo; --system spi"
USERADD_PARAM:${PN} = "--system --no-create-home --home-dir ${localstatedir}/lib/portier \
    --shell /sbin/nologin --user-group --groups video,gpio,hailo,spi portier"

SYSTEMD_SERVICE:${PN} = "portier.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

do_install:append() {
    # cargo_bin_do_install has put the binary in ${bindir}, and the library half of the crate
    # (libportier.rlib, a build product only) in ${libdir}: drop it.
    rm -f ${D}${libdir}/libportier.rlib
    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${S}/systemd/portier.service ${S}/systemd/portier-secure-door.service \
        ${D}${systemd_system_unitdir}/

    install -d ${D}${nonarch_libdir}/sysusers.d ${D}${nonarch_libdir}/tmpfiles.d
    install -m 0644 ${S}/systemd/sysusers.d/portier.conf ${D}${nonarch_libdir}/sysusers.d/portier.conf
    install -m 0644 ${S}/systemd/tmpfiles.d/portier.conf ${D}${nonarch_libdir}/tmpfiles.d/portier.conf

    install -d ${D}${nonarch_base_libdir}/udev/rules.d
    install -m 0644 ${S}/board/pi5-hailo8/60-portier.rules ${D}${nonarch_base_libdir}/udev/rules.d/

    # The default configuration: the Pi 5 + Hailo-8 board file. A technician edits it in
    # place; package upgrades keep the edited copy (CONFFILES).
    install -d ${D}${sysconfdir}/portier
    install -m 0644 ${S}/board/pi5-hailo8.toml ${D}${sysconfdir}/portier/portier.toml

    # Board files for reference on the device: wiring notes, config.txt fragment, configs.
    install -d ${D}${datadir}/portier/board/pi5-hailo8 ${D}${datadir}/portier/models
    install -m 0644 ${S}/board/pi5-hailo8/WIRING.md ${S}/board/pi5-hailo8/config.txt \
        ${S}/board/pi5-hailo8/60-portier.rules ${D}${datadir}/portier/board/pi5-hailo8/
    install -m 0644 ${S}/board/*.toml ${D}${datadir}/portier/board/

    # The units' Documentation= and the field guide (portier-doc, which the image installs).
    install -d ${D}${docdir}/portier
    install -m 0644 ${S}/README.md ${D}${docdir}/portier/README.md
    install -m 0644 ${S}/yocto/README.md ${D}${docdir}/portier/FIELD.md
    install -m 0644 ${S}/CHANGELOG.md ${D}${docdir}/portier/CHANGELOG.md

    install -d -m 0700 -o portier -g portier ${D}${localstatedir}/lib/portier
}

CONFFILES:${PN} = "${sysconfdir}/portier/portier.toml"

# ${datadir}/portier is in FILES:${PN} by default.
# portier-secure-door.service is not enabled: portier.service starts it through OnFailure=.
FILES:${PN} += "${systemd_system_unitdir}/portier.service \
                ${systemd_system_unitdir}/portier-secure-door.service \
                ${nonarch_libdir}/sysusers.d/portier.conf \
                ${nonarch_libdir}/tmpfiles.d/portier.conf \
                ${nonarch_base_libdir}/udev/rules.d/60-portier.rules \
                ${localstatedir}/lib/portier"

# libonnxruntime.so is dlopen()ed (no DT_NEEDED), so name it; HailoRT and the Hailo-8 PCIe
# driver and firmware come from meta-hailo's Hailo-8 branch.
RDEPENDS:${PN} += "hailo-firmware \
                   hailo-pci \
                   libhailort \
                   onnxruntime"

# The README the units' Documentation= names and the field guide: ${docdir} goes to portier-doc
# (as in every OE recipe); recommended, so an image that takes portier takes it too.
RRECOMMENDS:${PN} += "${PN}-doc"
