SUMMARY = "The Hailo-8 recognizer for portier (a HEF the technician supplies at build time)"
DESCRIPTION = "Installs the HEF that board/pi5-hailo8.toml names, \
/usr/share/portier/models/arcface_mobilefacenet.hef, from PORTIER_HEF_URI: a URL checked \
against PORTIER_HEF_SHA256, or a local file (file:///absolute/path). Meant for the Hailo Model \
Zoo's arcface_mobilefacenet compiled for hailo8. Without PORTIER_HEF_URI the package is empty, \
the image builds as usual, and portier runs every face on the CPU and says so (log, selftest, \
MQTT). See yocto/README.md."
HOMEPAGE = "https://github.com/hailo-ai/hailo_model_zoo"
SECTION = "security"
# The Hailo Model Zoo lists arcface_mobilefacenet under the MIT licence. Its weights come from
# InsightFace (arcface_torch, trained on MS1MV3), whose models trained on those datasets are for
# non-commercial research only: check the terms before shipping a product with it.
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

# Set in local.conf or the kas file's local_conf_header (yocto/README.md):
#   PORTIER_HEF_URI = "https://hailo-model-zoo.s3.eu-west-2.amazonaws.com/ModelZoo/Compiled/v2.17.0/hailo8/arcface_mobilefacenet.hef"
#   PORTIER_HEF_SHA256 = "<64 hex digits: sha256sum of that file>"
# A URL needs its sha256 (bitbake checks it when fetching); for a local file the sha256 is
# optional and checked at install when given.
PORTIER_HEF_URI ??= ""
PORTIER_HEF_SHA256 ??= ""
# The installed file name: the one board/pi5-hailo8.toml's [npu] model names.
PORTIER_HEF_NAME ??= "arcface_mobilefacenet.hef"

SRC_URI = ""

python () {
    uri = d.getVar('PORTIER_HEF_URI')
    if not uri:
        return
    sha = d.getVar('PORTIER_HEF_SHA256')
    if not uri.startswith('file://') and not sha:
        bb.fatal("PORTIER_HEF_URI is a download (%s) but PORTIER_HEF_SHA256 is empty: set the "
                 "file's sha256 (sha256sum arcface_mobilefacenet.hef), or leave PORTIER_HEF_URI "
                 "empty for a CPU-only image" % uri)
    d.setVar('SRC_URI', '%s;name=hef;subdir=hef;downloadfilename=%s'
             % (uri, d.getVar('PORTIER_HEF_NAME')))
    if sha:
        d.setVarFlag('SRC_URI', 'hef.sha256sum', sha)
}

# The fetched file lands in ${WORKDIR}/hef (subdir=hef); with no HEF nothing is unpacked, so S
# is the work folder itself, which always exists.
S = "${WORKDIR}"
PORTIER_HEF_DIR = "${WORKDIR}/hef"
# A HEF from an earlier build (another PORTIER_HEF_URI) must not be installed instead.
do_unpack[cleandirs] = "${PORTIER_HEF_DIR}"

inherit allarch

INHIBIT_DEFAULT_DEPS = "1"
do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
    if [ -z "${PORTIER_HEF_URI}" ]; then
        bbnote "PORTIER_HEF_URI is empty: no HEF installed, portier runs CPU only"
        return
    fi
    # A download lands as hef/<PORTIER_HEF_NAME>; a local file keeps its path below hef/.
    hefs=$(find ${PORTIER_HEF_DIR} -type f 2>/dev/null)
    if [ "$(printf '%s\n' "$hefs" | grep -c .)" != 1 ]; then
        bbfatal "expected exactly one file from PORTIER_HEF_URI under ${PORTIER_HEF_DIR}, found: $hefs"
    fi
    if [ -n "${PORTIER_HEF_SHA256}" ]; then
        echo "${PORTIER_HEF_SHA256}  $hefs" | sha256sum -c - \
            || bbfatal "$hefs does not match PORTIER_HEF_SHA256"
    fi
    install -d ${D}${datadir}/portier/models
    install -m 0644 "$hefs" ${D}${datadir}/portier/models/${PORTIER_HEF_NAME}
}

# Empty without a HEF: the image installs it either way.
ALLOW_EMPTY:${PN} = "1"
FILES:${PN} += "${datadir}/portier/models/${PORTIER_HEF_NAME}"
