SUMMARY = "The models portier runs, from files or URLs the technician names at build time"
DESCRIPTION = "Installs into /usr/share/portier/models/ the models that \
board/pi5-hailo8.toml names: the YuNet detector, the PaddleX MobileFaceNet recognizer, the two \
MiniFASNet liveness models, the Hailo-8 recognizer HEF and its float32 parent (for `portier npu \
check`). Each comes from a PORTIER_*_URI \
(a URL, or file:///absolute/path) and is checked against its PORTIER_*_SHA256. A model whose \
URI is empty is left out: the image still builds; portier names what is missing (selftest, log, \
MQTT) and runs every face on the CPU without the HEF. See yocto/README.md."
HOMEPAGE = "https://example.invalid/portier"
SECTION = "security"
# YuNet (OpenCV Zoo): MIT. PaddleX MobileFaceNet: Apache-2.0. MiniFASNet (minivision
# Silent-Face-Anti-Spoofing): Apache-2.0. The Hailo Model Zoo lists arcface_mobilefacenet as MIT;
# its weights come from InsightFace (MS1MV3), whose trained models are for non-commercial
# research only: check the terms before shipping a product with it.
LICENSE = "MIT & Apache-2.0"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302 \
                    file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

# Set in local.conf or the kas file's local_conf_header, e.g.
#   PORTIER_DETECTOR_URI = "file:///srv/portier-models/face_detection_yunet_2023mar.onnx"
# Every URI needs its sha256 (a wrong or missing one skips this recipe, and so the image, with
# a message naming the variable).
#   PORTIER_HEF_URI = "https://hailo-model-zoo.s3.eu-west-2.amazonaws.com/ModelZoo/Compiled/v2.17.0/hailo8/arcface_mobilefacenet.hef"
#   PORTIER_HEF_SHA256 = "<64 hex digits: sha256sum of that file>"
# The ONNX models' checksums default to the files portier was measured with (the hashes in the
# shared assets' README): a different file fails the build unless its sha256 is set here too.
# The HEF and its twin have no default checksum (they depend on the compiler release).
PORTIER_DETECTOR_URI ??= ""
PORTIER_DETECTOR_SHA256 ??= "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"
PORTIER_RECOGNIZER_URI ??= ""
PORTIER_RECOGNIZER_SHA256 ??= "6ced4e0c36abba9dd24b48d725f7dbb94089f75b3d3445d3d67b85157cb64743"
PORTIER_LIVENESS_V2_URI ??= ""
PORTIER_LIVENESS_V2_SHA256 ??= "4eed38f0bde33c9b805942a5f25e42ce1161e2bda545254be622be957727794e"
PORTIER_LIVENESS_V1SE_URI ??= ""
PORTIER_LIVENESS_V1SE_SHA256 ??= "d819a69bac6b9ade2a0f4d9b60b618e1260f7bf3ba1fddff6c5d82131cb1083f"
PORTIER_HEF_URI ??= ""
PORTIER_HEF_SHA256 ??= ""
# The HEF's float32 parent (the zoo's mbf.onnx), for `portier npu check` only; no default sum.
PORTIER_TWIN_URI ??= ""
PORTIER_TWIN_SHA256 ??= ""

# Each model: <variable prefix>:<installed path below ${datadir}/portier/models>, the paths
# board/pi5-hailo8.toml names.
PORTIER_MODELS = "DETECTOR:face_detection_yunet_2023mar.onnx \
                  RECOGNIZER:paddlex_mobilefacenet_128d.onnx \
                  LIVENESS_V2:liveness/MiniFASNetV2.onnx \
                  LIVENESS_V1SE:liveness/MiniFASNetV1SE.onnx \
                  HEF:arcface_mobilefacenet.hef \
                  TWIN:arcface_mobilefacenet.onnx"

SRC_URI = ""
PORTIER_MODEL_TABLE = ""

python () {
    import re
    uris = []
    table = []
    for entry in d.getVar('PORTIER_MODELS').split():
        key, path = entry.split(':', 1)
        uri = d.getVar('PORTIER_%s_URI' % key)
        if not uri:
            continue
        sha = d.getVar('PORTIER_%s_SHA256' % key)
        if not sha:
            raise bb.parse.SkipRecipe(
                "PORTIER_%s_URI is set (%s) but PORTIER_%s_SHA256 is empty: set the file's "
                "sha256 (sha256sum %s); every model is checked" % (key, uri, key,
                                                                   os.path.basename(path)))
        if not re.fullmatch(r'[0-9a-f]{64}', sha):
            raise bb.parse.SkipRecipe("PORTIER_%s_SHA256 must be 64 lower-case hex digits "
                                      "(sha256sum), got '%s'" % (key, sha))
        if '..' in uri.split(';')[0].split('/'):
            raise bb.parse.SkipRecipe("PORTIER_%s_URI must not contain '..': %s" % (key, uri))
        name = key.lower()
        table.append('%s:%s:%s' % (name, path, sha))
        # Each model unpacks into a folder of its own, so install finds exactly one file; a
        # download is kept under its checksum, so two versions never share a name.
        uris.append('%s;name=%s;subdir=models/%s;downloadfilename=%s-%s'
                    % (uri, name, name, sha[:16], os.path.basename(path)))
        d.setVarFlag('SRC_URI', '%s.sha256sum' % name, sha)
    d.setVar('SRC_URI', ' '.join(uris))
    d.setVar('PORTIER_MODEL_TABLE', ' '.join(table))
}

# The fetched files land in ${WORKDIR}/models/<name>; with none, nothing is unpacked, so S is
# the work folder itself, which always exists.
S = "${WORKDIR}"
PORTIER_MODELS_DIR = "${WORKDIR}/models"
# A model from an earlier build (another URI) must not be installed instead.
do_unpack[cleandirs] = "${PORTIER_MODELS_DIR}"

inherit allarch

INHIBIT_DEFAULT_DEPS = "1"
do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
    install -d ${D}${datadir}/portier/models/liveness
    # PORTIER_MODEL_TABLE (set at parse above): <name>:<path>:<sha256> for each model with a
    # URI; the others are left out (the image builds; portier says what is missing).
    for entry in ${PORTIER_MODEL_TABLE}; do
        name=${entry%%:*}
        rest=${entry#*:}
        path=${rest%%:*}
        sha=${rest#*:}
        dir=${PORTIER_MODELS_DIR}/$name
        [ -d "$dir" ] || bbfatal "$name: nothing was unpacked into $dir"
        # A download lands as <name>/<file>; a local file keeps its path below <name>/.
        files=$(find "$dir" -type f)
        if [ "$(printf '%s\n' "$files" | grep -c .)" != 1 ]; then
            bbfatal "expected exactly one file for $name under $dir, found: $files"
        fi
        # bitbake checks a download's sha256 when fetching; this also checks a local file.
        echo "$sha  $files" | sha256sum -c - >/dev/null \
            || bbfatal "$files does not match PORTIER_$(echo $name | tr a-z A-Z)_SHA256 ($sha)"
        install -m 0644 "$files" ${D}${datadir}/portier/models/$path
    done
}

# Empty when no model is named: the image installs it either way.
ALLOW_EMPTY:${PN} = "1"
FILES:${PN} += "${datadir}/portier/models"
