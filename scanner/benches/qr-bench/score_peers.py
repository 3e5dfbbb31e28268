#!/usr/bin/env python3
"""Scores peer decoders on a set from make_set.py: how many pictures each decodes to
the exact text, and the median time per picture (decode only, picture already loaded),
in all and per kind.

A copy of shared/qr-bench/score_peers.py, extended for issue 8: a median per kind,
and pictures of the "empty" kind (manifest text "") count as read right when the
decoder finds no code in them.

    python3 -m pip install zxing-cpp opencv-python-headless pillow numpy
    python3 score_peers.py SET_DIR
"""
import json, os, statistics, sys, time
import cv2


def main():
    d = sys.argv[1]
    items = json.load(open(os.path.join(d, "manifest.json")))
    peers = {}
    try:
        import zxingcpp
        peers["zxing-cpp"] = lambda img: [r.text for r in zxingcpp.read_barcodes(img, formats=zxingcpp.BarcodeFormat.QRCode)]
    except ImportError:
        pass
    det = cv2.QRCodeDetector()
    peers["opencv"] = lambda img: [det.detectAndDecode(img)[0]]
    for name, fn in peers.items():
        ok, times, by_kind = 0, [], {}
        for it in items:
            img = cv2.imread(os.path.join(d, it["file"]), cv2.IMREAD_GRAYSCALE)
            t = time.perf_counter()
            texts = fn(img)
            spent = time.perf_counter() - t
            times.append(spent)
            texts = [x for x in texts if x]
            hit = it["text"] in texts if it["text"] else not texts
            ok += hit
            k = by_kind.setdefault(it["kind"], [0, 0, []])
            k[0] += hit
            k[1] += 1
            k[2].append(spent)
        print("%-10s %3d/%d decoded  median %.1f ms  | %s" % (
            name, ok, len(items), 1000 * statistics.median(times),
            " ".join("%s:%d/%d" % (k, v[0], v[1]) for k, v in by_kind.items())))
        for k, v in by_kind.items():
            print("%-10s   %-20s %3d/%-3d median %7.2f ms" % (name, k, v[0], v[1], 1000 * statistics.median(v[2])))


if __name__ == "__main__":
    main()
