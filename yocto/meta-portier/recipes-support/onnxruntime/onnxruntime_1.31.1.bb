SUMMARY = "ONNX Runtime shared library (prebuilt, from the PyPI wheel)"
DESCRIPTION = "libonnxruntime.so for portier's CPU embedder. portier loads it at run time \
(the ort crate's load-dynamic), so only the C API library is packaged: no headers, no Python. \
The library is Microsoft's official aarch64 build, taken from the onnxruntime wheel on PyPI, \
the same artefact scripts/fetch-onnxruntime uses on development machines. A layer that builds \
ONNX Runtime from source may replace this recipe: portier needs ONNX Runtime 1.20 or newer."
HOMEPAGE = "https://onnxruntime.ai/"
BUGTRACKER = "https://github.com/microsoft/onnxruntime/issues"
SECTION = "libs"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://onnxruntime/LICENSE;md5=0f7e3b1308cb5c00b372a6e78835732d"

# PyPI serves every file under /packages/<python tag>/<initial>/<project>/<file>. The CPython
# tag does not matter: libonnxruntime.so is the same for every tag; cp311 is pinned.
SRC_URI = "https://files.pythonhosted.org/packages/cp311/o/onnxruntime/onnxruntime-${PV}-cp311-cp311-manylinux_2_28_aarch64.whl;downloadfilename=onnxruntime-${PV}-aarch64.zip;subdir=${BP}"
SRC_URI[sha256sum] = "da05378364c44d4407e463982d2bf8d5e4cfea873283757e48beeb41df97b7f3"

S = "${WORKDIR}/${BP}"

# Prebuilt for aarch64 only (glibc >= 2.28, libstdc++ >= GLIBCXX_3.4.22).
COMPATIBLE_HOST = "aarch64.*-linux"

inherit bin_package

do_install() {
    # portier dlopen()s the unversioned name (see src/infer), so the library itself is
    # installed under that name, in the main package, with the SONAME as a symlink to it.
    # (A symlink named .so in a non -dev package would fail the dev-so QA check; a regular
    # file does not.)
    install -d ${D}${libdir}
    install -m 0755 ${S}/onnxruntime/capi/libonnxruntime.so.${PV} ${D}${libdir}/libonnxruntime.so
    ln -sf libonnxruntime.so ${D}${libdir}/libonnxruntime.so.1
}

# The wheel's library is already stripped by Microsoft: do not strip or split it again (which
# is what the already-stripped QA check would complain about).
INHIBIT_PACKAGE_STRIP = "1"
INHIBIT_PACKAGE_DEBUG_SPLIT = "1"

FILES_SOLIBSDEV = ""
FILES:${PN} += "${libdir}/libonnxruntime.so"
