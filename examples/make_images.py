"""Draw the small input images `jobs.example.csv` uses, so the example runs offline.

Simple Pillow shapes standing in for the seed document's examples: a model, a dress, a pose, a
necklace, a bag, letter blocks with text, a dotted shirt, a depth map and a street scene. Every image
is 512–768 px a side (inside the API's 384–3072 px range) and a few KB, so `qwenedit validate
--check-images jobs.example.csv` passes without warnings.

Run from the repository root: `python examples/make_images.py` (it overwrites examples/images/).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

OUT = Path(__file__).resolve().parent / "images"


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _backdrop(w: int, h: int, top: tuple[int, int, int], bottom: tuple[int, int, int]) -> Image.Image:
    """A vertical two-colour gradient in 16 bands (bands keep PNGs small)."""
    im = Image.new("RGB", (w, h), top)
    d = ImageDraw.Draw(im)
    bands = 16
    for i in range(bands):
        t = i / (bands - 1)
        colour = tuple(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True))
        d.rectangle([0, i * h // bands, w, (i + 1) * h // bands], fill=colour)
    return im


def model() -> Image.Image:
    im = _backdrop(512, 768, (236, 232, 226), (200, 196, 190))
    d = ImageDraw.Draw(im)
    d.ellipse([206, 90, 306, 200], fill=(233, 196, 170))  # face
    d.pieslice([196, 70, 316, 230], 180, 360, fill=(60, 40, 30))  # hair
    d.rectangle([236, 200, 276, 230], fill=(233, 196, 170))  # neck
    d.rounded_rectangle([176, 230, 336, 480], radius=30, fill=(245, 245, 245))  # top
    d.rectangle([196, 480, 316, 700], fill=(70, 90, 140))  # trousers
    d.line([256, 560, 256, 700], fill=(50, 65, 110), width=4)
    return im


def dress() -> Image.Image:
    im = Image.new("RGB", (512, 768), (250, 250, 250))
    d = ImageDraw.Draw(im)
    d.polygon([(206, 120), (306, 120), (330, 300), (420, 680), (92, 680), (182, 300)], fill=(20, 20, 24))
    d.line([(206, 120), (226, 60)], fill=(20, 20, 24), width=8)  # straps
    d.line([(306, 120), (286, 60)], fill=(20, 20, 24), width=8)
    return im


def pose() -> Image.Image:
    im = Image.new("RGB", (512, 768), (240, 244, 248))
    d = ImageDraw.Draw(im)
    ink, w = (40, 60, 90), 14
    d.ellipse([216, 120, 296, 200], outline=ink, width=w)  # head
    d.line([(256, 200), (256, 420)], fill=ink, width=w)  # back
    d.line([(256, 420), (380, 420), (380, 600)], fill=ink, width=w, joint="curve")  # seated leg
    d.line([(256, 260), (180, 360)], fill=ink, width=w)  # arm
    d.rectangle([200, 430, 420, 450], fill=(150, 110, 70))  # bench
    return im


def necklace() -> Image.Image:
    im = Image.new("RGB", (512, 512), (245, 240, 235))
    d = ImageDraw.Draw(im)
    d.arc([96, 60, 416, 380], 20, 160, fill=(200, 170, 60), width=6)
    d.ellipse([236, 360, 276, 400], fill=(40, 120, 200), outline=(200, 170, 60), width=4)
    return im


def bag() -> Image.Image:
    im = Image.new("RGB", (512, 512), (246, 246, 246))
    d = ImageDraw.Draw(im)
    d.arc([176, 90, 336, 260], 180, 360, fill=(110, 60, 30), width=14)  # handle
    d.rounded_rectangle([126, 170, 386, 420], radius=24, fill=(150, 85, 45))
    d.rectangle([236, 230, 276, 260], fill=(210, 180, 90))  # clasp
    return im


def sign() -> Image.Image:
    im = _backdrop(768, 512, (250, 246, 238), (226, 218, 204))
    d = ImageDraw.Draw(im)
    font = _font(34)
    for row, word in enumerate(("HEALTH", "INSURANCE")):
        x0 = (768 - len(word) * 62) // 2
        for i, ch in enumerate(word):
            x, y = x0 + i * 62, 170 + row * 90
            d.rectangle([x, y, x + 56, y + 74], fill=(214, 170, 110), outline=(150, 110, 60), width=3)
            d.text((x + 28, y + 37), ch, fill=(40, 30, 20), font=font, anchor="mm")
    return im


def shirt() -> Image.Image:
    im = Image.new("RGB", (512, 640), (236, 236, 236))
    d = ImageDraw.Draw(im)
    body = [(146, 140), (206, 110), (306, 110), (366, 140), (446, 240), (396, 280), (366, 250), (366, 560),
            (146, 560), (146, 250), (116, 280), (66, 240)]  # fmt: skip
    d.polygon(body, fill=(250, 250, 250), outline=(120, 120, 120))
    for y in range(150, 550, 40):
        for x in range(170, 350, 40):
            d.ellipse([x, y, x + 12, y + 12], fill=(30, 30, 30))
    return im


def depth() -> Image.Image:
    im = Image.new("L", (768, 512), 20)
    d = ImageDraw.Draw(im)
    for i in range(12):  # the ground: nearer is brighter
        d.rectangle([0, 300 + i * 18, 768, 318 + i * 18], fill=60 + i * 15)
    for cx in (250, 520):  # two wheels
        d.ellipse([cx - 110, 210, cx + 110, 430], outline=235, width=14)
    d.line([(250, 320), (380, 220), (520, 320), (250, 320)], fill=225, width=12)  # frame
    d.line([(380, 220), (360, 170)], fill=215, width=10)  # seat post
    return im.convert("RGB")


def street() -> Image.Image:
    im = _backdrop(768, 512, (150, 190, 230), (220, 230, 240))
    d = ImageDraw.Draw(im)
    for i, (x, h) in enumerate(((0, 260), (130, 320), (260, 220), (420, 360), (580, 280))):
        d.rectangle([x, 512 - h, x + 120, 512], fill=(110 + i * 12, 110 + i * 8, 120))
    d.ellipse([354, 250, 414, 310], fill=(233, 196, 170))  # a person in front
    d.rounded_rectangle([334, 310, 434, 512], radius=20, fill=(180, 40, 50))
    return im


IMAGES = {
    "model.png": model,
    "dress.png": dress,
    "pose.png": pose,
    "necklace.png": necklace,
    "bag.png": bag,
    "sign.png": sign,
    "shirt.jpg": shirt,
    "depth-map.png": depth,
    "street.jpg": street,
}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, draw in IMAGES.items():
        im = draw()
        path = OUT / name
        if name.endswith(".jpg"):
            im.save(path, "JPEG", quality=85, optimize=True)
        else:
            im.convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(path, "PNG", optimize=True)
        print(f"{path.relative_to(OUT.parent.parent)}  {im.width}×{im.height}  {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
