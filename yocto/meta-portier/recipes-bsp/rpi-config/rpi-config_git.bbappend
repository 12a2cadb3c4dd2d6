# Append portier's config.txt fragment (PCIe Gen 3 for the Hailo-8, SPI0 for the display) to
# the config.txt that meta-raspberrypi generates. The fragment lives in the portier repository
# beside the other board files (board/pi5-hailo8/config.txt), one source for Raspberry Pi OS
# and for this image: the layer sits at yocto/meta-portier in that repository.
FILESEXTRAPATHS:prepend:raspberrypi5 := "${THISDIR}/../../../../board/pi5-hailo8:"
SRC_URI:append:raspberrypi5 = " file://config.txt;subdir=portier"

# raspberrypi5 is meta-raspberrypi's machine, which oelint-adv does not know of.
# nooelint: oelint.func.specific
do_deploy:append:raspberrypi5() {
    {
        echo ""
        echo "# --- portier (board/pi5-hailo8/config.txt) ---"
        cat ${WORKDIR}/portier/config.txt
    } >> ${DEPLOYDIR}/${BOOTFILES_DIR_NAME}/config.txt
}
