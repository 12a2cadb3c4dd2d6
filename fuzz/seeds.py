#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/corpus/<target>/: small hand-made inputs that reach each
target's interesting paths (valid ones and near misses); libFuzzer mutates from them.

Needs Pillow (`pip install pillow`) for the JPEG seeds. Deterministic: running it again gives
the same files. Usage: fuzz/seeds.py (from anywhere)."""

import hashlib
import hmac
import io
import shutil
import struct
from pathlib import Path

from PIL import Image

FUZZ = Path(__file__).resolve().parent
CORPUS = FUZZ / "corpus"


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


# --- config: the shipped board files ---------------------------------------------------------
for f in sorted((FUZZ.parent / "board").glob("*.toml")):
    write("config", f.name, f.read_bytes())
write("config", "minimal.toml", b'[detector]\nmodel = "d.onnx"\nkind = "yunet"\n')

# --- JPEG frames ---------------------------------------------------------------------------
def picture(w, h):
    img = Image.new("RGB", (w, h))
    img.putdata([((x * 37) % 256, (y * 53) % 256, ((x + y) * 29) % 256)
                 for y in range(h) for x in range(w)])
    return img


def jpeg(img, **opts):
    buf = io.BytesIO()
    img.save(buf, "JPEG", **opts)
    return buf.getvalue()


def strip_dht(data):
    """Drops the Huffman tables, as UVC cameras do (the decoder supplies the standard ones)."""
    out, pos = bytearray(data[:2]), 2
    while pos < len(data):
        marker = data[pos + 1]
        if marker == 0xDA:  # start of scan: the rest is entropy-coded data
            out += data[pos:]
            break
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if marker != 0xC4:
            out += data[pos:pos + 2 + length]
        pos += 2 + length
    return bytes(out)


exif = Image.Exif()
exif[0x0112] = 6  # orientation: rotate 90° clockwise
frames = {
    "baseline_420.jpg": jpeg(picture(16, 16), quality=75, subsampling=2),
    "baseline_444.jpg": jpeg(picture(24, 8), quality=90, subsampling=0),
    "baseline_422.jpg": jpeg(picture(16, 16), quality=50, subsampling=1),
    "progressive.jpg": jpeg(picture(16, 16), quality=75, progressive=True),
    "gray.jpg": jpeg(picture(8, 8).convert("L"), quality=80),
    "exif_rotated.jpg": jpeg(picture(8, 16), quality=75, exif=exif.tobytes()),
    "optimized.jpg": jpeg(picture(16, 8), quality=60, optimize=True),
}
frames["uvc_no_huffman.jpg"] = strip_dht(frames["baseline_420.jpg"])
frames["truncated.jpg"] = frames["baseline_444.jpg"][:-40]
for name, data in frames.items():
    write("frame_mjpeg", name, data)

# --- MJPEG streams ----------------------------------------------------------------------------
a, b = frames["baseline_420.jpg"], frames["gray.jpg"]
# An EXIF blob holding FF D8 ... FF D9 (an embedded thumbnail's markers) must not end the frame.
thumb = Image.Exif()
thumb[0x010E] = "x\xff\xd8\xff\xd9y"
with_thumb = jpeg(picture(8, 8), quality=75, exif=thumb.tobytes())
write("mjpeg_split", "two_frames", a + b)
write("mjpeg_split", "garbage_between", b"junk" + a + b"\x00\xff\xd8" + b + b"\xff")
write("mjpeg_split", "exif_eoi", with_thumb + a)
write("mjpeg_split", "truncated", a + b[: len(b) // 2])
write("mjpeg_split", "restart_fill", frames["optimized.jpg"] + b"\xff\xff\xd8\xff\xd9")

# --- raw frames: [format] [width u16] [height u16] [stride u16] bytes ------------------------
def raw(fmt, w, h, stride, data):
    return struct.pack("<BHHH", fmt, w, h, stride) + data


write("frame_raw", "yuyv_4x2", raw(1, 4, 2, 0, bytes(range(16))))
write("frame_raw", "yuyv_stride", raw(1, 2, 3, 6, bytes(range(0, 256, 15))))
write("frame_raw", "yuyv_odd_width", raw(1, 3, 1, 0, bytes(6)))
write("frame_raw", "rgb_2x2", raw(0, 2, 2, 0, bytes(range(12))))
write("frame_raw", "rgb_stride_short", raw(0, 2, 2, 8, bytes(range(13))))

# --- MQTT commands -----------------------------------------------------------------------------
KEY, DEVICE, START = b"0123456789abcdef0123456789abcdef", "front-door", 1764355200


def signed(action, ts, nonce, device=DEVICE, sig=None):
    msg = f"portier-command-v1\n{device}\n{action}\n{ts}\n{nonce}".encode()
    sig = sig or hmac.new(KEY, msg, hashlib.sha256).hexdigest()
    return ('{"device":"%s","action":"%s","ts":%d,"nonce":"%s","sig":"%s"}'
            % (device, action, ts, nonce, sig)).encode()


def raw_step(payload, advance=0, retained=False):
    """A step of the mqtt_command target: a raw payload (see its `run`)."""
    return bytes([advance, 0xF1 if retained else 0x01]) + struct.pack("<H", len(payload)) + payload


def signed_step(nonce, advance=0, device_ok=True, action=0, ts_offset=0):
    """A step of the mqtt_command target: fields signed with the door's key."""
    other = "front-doorX"  # another door: a length byte, then characters of the device alphabet
    device = b"\x00" if device_ok else bytes([1, len(other)]) + bytes(
        "front-dor.X_".index(c) for c in other)
    return (bytes([advance, 0x00]) + device + bytes([action, ts_offset + 40, len(nonce)])
            + bytes("0123456789abcdefXYZ_-+ ".index(c) for c in nonce))


good = signed("unlock", START, "3f9a1c0d5e7b2a48")
write("mqtt_command", "accepted_then_replayed", raw_step(good) + raw_step(good, advance=5))
write("mqtt_command", "retained", raw_step(good, retained=True))
write("mqtt_command", "bad_signature", raw_step(signed("lock", START, "3f9a1c0d5e7b2a48", sig="0" * 64)))
write("mqtt_command", "uppercase_sig", raw_step(good.replace(b'"sig":"', b'"sig":"A', 1)[:-2] + b'"}'))
write("mqtt_command", "extra_field", raw_step(good[:-1] + b',"x":1}'))
write("mqtt_command", "float_ts", raw_step(good.replace(b"1764355200", b"1764355200.0")))
write("mqtt_command", "array", raw_step(b'["front-door","unlock",1764355200,"3f9a1c0d5e7b2a48","00"]'))
write("mqtt_command", "stale", raw_step(good, advance=60) + raw_step(good, advance=60))
write("mqtt_command", "signed_steps",
      signed_step("0123456789abcdef") + signed_step("0123456789abcdef", advance=3)
      + signed_step("fedcba9876543210", action=2, ts_offset=-35)
      + signed_step("0123") + signed_step("XYZ_-XYZ_-XYZ_-X", device_ok=False)
      + signed_step("abcdefabcdefabcd", advance=40) + signed_step("abcdefabcdefabc0")
      + signed_step("abcdefabcdefabc1") + signed_step("abcdefabcdefabc2"))

# --- detector outputs: [flags] [width] [height] [threshold] [anchors] modes... values... -----
def detect(flags, w, h, threshold, anchors, modes, values):
    return bytes([flags, w, h, threshold, anchors]) + bytes(modes) + struct.pack(
        f"<{len(values)}f", *values)


pool = [0.0, 0.9, 0.5, -0.25, 1.0, 0.1, 2.0, 0.75]
special = [float("nan"), float("inf"), -float("inf"), 3.4e38, 0.6, -1e-45]
write("detect_decode", "scrfd_numeric", detect(0, 0, 1, 128, 1, [0] * 9, pool))
write("detect_decode", "scrfd_named", detect(2, 1, 0, 128, 0, [0] * 9, pool))
write("detect_decode", "scrfd_nhwc", detect(4, 0, 0, 100, 1, [0] * 9, pool))
write("detect_decode", "scrfd_special", detect(0, 0, 0, 128, 1, [0] * 9, special))
write("detect_decode", "scrfd_bad_shapes", detect(2, 0, 0, 128, 1, [4, 4, 4, 5, 6, 7, 9, 3, 0], pool))
write("detect_decode", "yunet", detect(1, 0, 1, 128, 0, [0] * 12, pool))
write("detect_decode", "yunet_special", detect(1, 0, 0, 100, 0, [0] * 12, special))
write("detect_decode", "yunet_bad_shapes", detect(1, 1, 0, 128, 0, [0, 4, 5, 6, 7, 2, 9] + [0] * 5, pool))

# --- gallery backup headers: magic, Argon2 memory KiB / passes / lanes (u32 LE), salt, sealed --
def backup(memory_kib, passes, lanes, sealed=bytes(range(64)), magic=b"PRTRBAK\x01"):
    return magic + struct.pack("<3I", memory_kib, passes, lanes) + bytes(range(16)) + sealed


write("backup_header", "cheap", backup(64, 1, 1))
write("backup_header", "export_costs", backup(1 << 16, 3, 4))
write("backup_header", "greedy", backup(0xFFFFFFFF, 16, 16))
write("backup_header", "zero_lanes", backup(64, 1, 0))
write("backup_header", "short_sealed", backup(8, 1, 1, sealed=b"\x01" * 5))
write("backup_header", "truncated", backup(64, 1, 1)[:20])
write("backup_header", "wrong_magic", backup(64, 1, 1, magic=b"PRTRBAK\x02"))

# --- outbox logs: MAGIC, then MARKER len crc body records (src/mqtt/outbox.rs, "File format") --
OUTBOX_MAGIC = b"PORTIER-OUTBOX\x00\x01"


def record(body):
    import zlib
    n = struct.pack("<I", len(body))
    return b"\x5a\x0b\x0c\x7e" + n + struct.pack("<I", zlib.crc32(n + body)) + body


def entry(seq, topic, payload):
    t = topic.encode()
    return record(b"\x02" + struct.pack("<QH", seq, len(t)) + t + payload)


checkpoint = record(b"\x01" + struct.pack("<QQ", 7, 2))
events = [entry(7, "portier/front/event/access", b'{"kind":"granted"}'),
          entry(8, "portier/front/event/access", b'{"kind":"unknown"}'),
          entry(9, "portier/front/lock/state", b"LOCKED")]
ack = record(b"\x03" + struct.pack("<Q", 8))
drop = record(b"\x04" + struct.pack("<QQ", 7, 3))
log = OUTBOX_MAGIC + checkpoint + b"".join(events) + ack
write("outbox_recover", "three_events_one_acked", log)
write("outbox_recover", "dropped", log + drop)
write("outbox_recover", "torn_last_record", log + events[0][:15])
flipped = bytearray(log)
flipped[len(OUTBOX_MAGIC) + len(checkpoint) + 6] ^= 0x40
write("outbox_recover", "flipped_length", bytes(flipped))
flipped_magic = bytearray(log)
flipped_magic[3] ^= 0x20
write("outbox_recover", "flipped_magic", bytes(flipped_magic))
write("outbox_recover", "header_only", OUTBOX_MAGIC)
write("outbox_recover", "truncated_header", OUTBOX_MAGIC[:9])
write("outbox_recover", "newer_version", OUTBOX_MAGIC[:-1] + b"\x02" + checkpoint)
write("outbox_recover", "garbage", b"\x00garbage, not an outbox\xff" * 3)

if __name__ == "__main__":
    for d in sorted(CORPUS.iterdir()):
        files = list(d.iterdir())
        print(f"{d.name}: {len(files)} seeds, {sum(f.stat().st_size for f in files)} bytes")
