#!/usr/bin/env python3
"""Builds a set of camera-like pictures of ticket QR codes, for measuring a decoder.

A copy of shared/qr-bench/make_set.py (the project's shared benchmark tooling),
extended for issue 8 with three kinds drawn after the old ones, so a seed gives
the old kinds' pictures unchanged: tiny_modules (1.5 to 2 px modules in a
640x480 frame), strong_perspective (corners moved by up to ~30 % of the code's
size) and empty (cluttered 640x480 and 1280x720 frames with no code, whose
manifest text is "": nothing must be read).

Each picture holds one QR code, drawn by an independent encoder (segno) and then put
through what a gate camera sees: small or large modules, rotation, perspective tilt,
blur, sensor noise, low contrast, uneven light, JPEG compression, a cluttered frame.
manifest.json lists every picture with the exact text it must decode to.

    python3 -m pip install segno pillow numpy opencv-python-headless
    python3 make_set.py OUT_DIR [--seed N] [--per-kind N] [--kinds a,b,...]
    python3 make_set.py scanner/tests/data --fixtures --seed 8    # the test pictures
"""
import argparse, base64, io, json, os, random

import cv2
import numpy as np
import segno
from PIL import Image


def ticket_text(rng):
    seat = rng.choice(["", "A-1-1", "B-12-7", "Balcony-3-114", "Floor-GA"]).encode()
    body = bytes([1]) + rng.randbytes(4 + 8 + 16 + 2) + bytes([rng.randint(0, 1)]) + rng.randbytes(8)
    body += bytes([len(seat)]) + seat + rng.randbytes(64)
    return "VT1:" + base64.urlsafe_b64encode(body).decode().rstrip("=")


def render(text, module_px, border=4, invert=False):
    q = segno.make(text, error="m", mode="byte")
    buf = io.BytesIO()
    dark, light = ("white", "black") if invert else ("black", "white")
    q.save(buf, kind="png", scale=module_px, border=border, dark=dark, light=light)
    return np.array(Image.open(buf).convert("L"))


def place(code, rng, frame=(720, 1280), clutter=True):
    h, w = frame
    if clutter:
        bg = rng.integers(60, 200, size=(h // 16 + 1, w // 16 + 1)).astype(np.uint8)
        bg = cv2.resize(bg, (w, h), interpolation=cv2.INTER_CUBIC)
        for _ in range(12):
            x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
            cv2.putText(bg, "GATE %d" % rng.integers(1, 40), (x, y), cv2.FONT_HERSHEY_SIMPLEX,
                        float(rng.uniform(0.5, 2.0)), int(rng.integers(0, 255)), 2)
    else:
        bg = np.full((h, w), 255, np.uint8)
    ch, cw = code.shape
    if ch > h or cw > w:
        s = min(h / ch, w / cw) * 0.9
        code = cv2.resize(code, (int(cw * s), int(ch * s)), interpolation=cv2.INTER_AREA)
        ch, cw = code.shape
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    bg[y:y + ch, x:x + cw] = code
    return bg


def rotate(code, deg):
    """Turns the code on a canvas large enough to hold it whole."""
    h, w = code.shape
    side = int(np.ceil(np.hypot(h, w)))
    canvas = np.full((side, side), 255, np.uint8)
    canvas[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = code
    m = cv2.getRotationMatrix2D((side / 2, side / 2), deg, 1.0)
    return cv2.warpAffine(canvas, m, (side, side), borderValue=255)


def tilt(img, rng, amount):
    h, w = img.shape
    d = amount * min(h, w)
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    dst = np.float32([[rng.uniform(0, d), rng.uniform(0, d)], [w - rng.uniform(0, d), rng.uniform(0, d)],
                      [w - rng.uniform(0, d), h - rng.uniform(0, d)], [rng.uniform(0, d), h - rng.uniform(0, d)]])
    return cv2.warpPerspective(img, cv2.getPerspectiveTransform(src, dst), (w, h), borderValue=int(np.median(img)))


def noise(img, rng, sigma):
    return np.clip(img.astype(np.float32) + rng.normal(0, sigma, img.shape), 0, 255).astype(np.uint8)


def contrast(img, lo, hi):
    return (lo + img.astype(np.float32) * (hi - lo) / 255).astype(np.uint8)


def light(img, rng):
    h, w = img.shape
    yy, xx = np.mgrid[0:h, 0:w]
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    glow = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (0.35 * w) ** 2)))
    shade = 0.45 + 0.55 * (xx / w)
    out = img.astype(np.float32) * shade + 110 * glow
    return np.clip(out, 0, 255).astype(np.uint8)


def jpeg(img, q):
    ok, enc = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])
    return cv2.imdecode(enc, cv2.IMREAD_GRAYSCALE)


def motion(img, k):
    kern = np.zeros((k, k), np.float32)
    kern[k // 2, :] = 1.0 / k
    return cv2.filter2D(img, -1, kern)


def camera(img, rng, blur, sigma, quality):
    """What a cheap sensor adds: a little blur, noise, JPEG."""
    img = cv2.GaussianBlur(img, (0, 0), blur)
    return jpeg(noise(img, rng, sigma), quality)


def tiny(text, rng, frame=(480, 640)):
    """Modules of 1.5 to 2 px: drawn at 2 px, shrunk with area averaging, in a 640x480 frame."""
    module = float(rng.uniform(1.5, 2.0))
    code = render(text, 2)
    side = int(round(code.shape[0] * module / 2))
    code = cv2.resize(code, (side, side), interpolation=cv2.INTER_AREA)
    frame = place(code, rng, frame=frame)
    return camera(frame, rng, float(rng.uniform(0.3, 0.6)), float(rng.uniform(3, 7)), int(rng.integers(70, 90)))


def perspective(text, rng, frame=(720, 1280)):
    """A code seen at 30 to 45 degrees: one edge (the far one) shorter and nearer
    the opposite edge, each corner moved by up to ~30 % of the code's size, turned
    at random, in a cluttered 1280x720 frame."""
    code = render(text, int(rng.integers(4, 7)))
    s = code.shape[0]
    sq = np.float32([[0, 0], [s, 0], [s, s], [0, s]])
    # The far edge runs from corner `far` to the next one; it narrows by
    # `narrow` of the size at each end and comes nearer by `depth`.
    far = int(rng.integers(0, 4))
    narrow, depth = float(rng.uniform(0.12, 0.3)) * s, float(rng.uniform(0.05, 0.25)) * s
    centre = sq.mean(axis=0)
    dst = sq.copy()
    a, b = far, (far + 1) % 4
    along = (sq[b] - sq[a]) / s
    inward = centre - (sq[a] + sq[b]) / 2
    inward /= np.linalg.norm(inward)
    dst[a] += along * narrow + inward * depth
    dst[b] -= along * narrow - inward * depth
    dst += rng.uniform(-0.04, 0.04, size=(4, 2)).astype(np.float32) * s
    # Turned at random, on a white card just large enough to hold it.
    t = np.radians(float(rng.uniform(0, 360)))
    dst = (dst - centre) @ np.float32([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
    dst -= dst.min(axis=0) - 8
    w, h = (dst.max(axis=0) + 8).astype(int)
    m = cv2.getPerspectiveTransform(sq, dst.astype(np.float32))
    turned = cv2.warpPerspective(code, m, (int(w), int(h)), flags=cv2.INTER_LINEAR, borderValue=255)
    frame = place(turned, rng, frame=frame)
    return camera(frame, rng, float(rng.uniform(0.4, 0.9)), float(rng.uniform(3, 8)), int(rng.integers(60, 90)))


def empty(_text, rng, frame=None):
    """A gate camera's view with no code: background, signs, boxes, lines, a
    square logo now and then; 640x480 or 1280x720."""
    h, w = frame or [(480, 640), (720, 1280)][int(rng.integers(0, 2))]
    frame = place(np.full((1, 1), 128, np.uint8), rng, frame=(h, w))
    for _ in range(int(rng.integers(4, 12))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(10, w // 3)), y0 + int(rng.integers(10, h // 3))
        cv2.rectangle(frame, (x0, y0), (x1, y1), int(rng.integers(0, 255)), int(rng.choice([-1, 1, 2, 4])))
    for _ in range(int(rng.integers(4, 12))):
        p0 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.line(frame, p0, p1, int(rng.integers(0, 255)), int(rng.integers(1, 6)))
    if rng.uniform() < 0.5:
        # A logo of nested squares, like one finder pattern.
        m = int(rng.integers(3, 10))
        x, y = int(rng.integers(0, w - 7 * m)), int(rng.integers(0, h - 7 * m))
        frame[y:y + 7 * m, x:x + 7 * m] = 0
        frame[y + m:y + 6 * m, x + m:x + 6 * m] = 255
        frame[y + 2 * m:y + 5 * m, x + 2 * m:x + 5 * m] = 0
    return camera(frame, rng, float(rng.uniform(0.5, 1.5)), float(rng.uniform(3, 10)), int(rng.integers(60, 90)))


KINDS = {
    "clean": lambda t, r: place(render(t, 6), r, clutter=False),
    "small_modules": lambda t, r: place(render(t, 2), r),
    "large_modules": lambda t, r: place(render(t, 12), r),
    "rotated": lambda t, r: place(rotate(render(t, 5), float(r.uniform(10, 350))), r),
    "tilted": lambda t, r: tilt(place(render(t, 6), r), r, 0.18),
    "blurred": lambda t, r: cv2.GaussianBlur(place(render(t, 6), r), (0, 0), float(r.uniform(1.0, 2.0))),
    "motion_blur": lambda t, r: motion(place(render(t, 7), r), int(r.integers(5, 9))),
    "noisy": lambda t, r: noise(place(render(t, 5), r), r, float(r.uniform(18, 35))),
    "low_contrast": lambda t, r: contrast(place(render(t, 6), r), int(r.integers(90, 120)), int(r.integers(150, 175))),
    "uneven_light": lambda t, r: light(place(render(t, 6), r), r),
    "jpeg": lambda t, r: jpeg(place(render(t, 4), r), int(r.integers(12, 25))),
    "everything": lambda t, r: jpeg(noise(cv2.GaussianBlur(tilt(light(place(render(t, 6), r), r), r, 0.1),
                                                           (0, 0), 1.0), r, 12), 40),
    # Issue 8's kinds: after the old ones, so the old pictures stay the same.
    "tiny_modules": tiny,
    "strong_perspective": perspective,
    "empty": empty,
}


# Small pictures for scanner/tests/data (--fixtures): name, kind, frame.
FIXTURES = [
    ("tiny_modules_far_phone.jpg", "tiny_modules", (480, 640)),
    ("tiny_modules_far_phone_2.jpg", "tiny_modules", (480, 640)),
    ("strong_perspective_45_degrees.jpg", "strong_perspective", (440, 440)),
    ("strong_perspective_45_degrees_2.jpg", "strong_perspective", (440, 440)),
    ("empty_cluttered_frame.jpg", "empty", (480, 640)),
]


def fixtures(out, seed):
    """Writes FIXTURES as JPEG (quality 80) into `out` and adds them to its
    manifest.json, keeping the entries already there."""
    rnd = random.Random(seed)
    rng = np.random.default_rng(seed)
    path = os.path.join(out, "manifest.json")
    manifest = json.load(open(path)) if os.path.exists(path) else []
    for name, kind, frame in FIXTURES:
        text = ticket_text(rnd)
        img = KINDS[kind](text, rng, frame=frame)
        cv2.imwrite(os.path.join(out, name), img, [cv2.IMWRITE_JPEG_QUALITY, 80])
        manifest = [m for m in manifest if m["file"] != name]
        manifest.append({"file": name, "kind": kind, "text": "" if kind == "empty" else text})
    with open(path, "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    print("%d fixtures in %s" % (len(FIXTURES), out))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--per-kind", type=int, default=5)
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--fixtures", action="store_true", help="write the test pictures of FIXTURES instead")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    if a.fixtures:
        return fixtures(a.out, a.seed)
    rnd = random.Random(a.seed)
    rng = np.random.default_rng(a.seed)
    manifest = []
    for kind in a.kinds.split(","):
        for i in range(a.per_kind):
            text = ticket_text(rnd)
            img = KINDS[kind](text, rng)
            if kind == "empty":
                text = ""
            name = "%s-%02d.png" % (kind, i)
            cv2.imwrite(os.path.join(a.out, name), img)
            manifest.append({"file": name, "kind": kind, "text": text})
    with open(os.path.join(a.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print("%d pictures in %s" % (len(manifest), a.out))


if __name__ == "__main__":
    main()
