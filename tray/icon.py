"""The tray icon, drawn with Pillow: a disc in the health colour, and a count badge."""

from __future__ import annotations

from PIL import Image, ImageDraw

SIZE = 64
COLOURS = {
    "green": (46, 160, 67, 255),
    "amber": (230, 160, 0, 255),
    "red": (207, 34, 46, 255),
    "grey": (140, 140, 140, 255),
}
BADGE = (255, 255, 255, 255)


def draw_icon(colour: str, badge: int | None = None) -> Image.Image:
    image = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
    pen = ImageDraw.Draw(image)
    pen.ellipse((4, 4, SIZE - 4, SIZE - 4), fill=COLOURS[colour])
    if badge:
        pen.ellipse((34, 34, SIZE - 1, SIZE - 1), fill=BADGE, outline=COLOURS[colour], width=3)
        text = str(badge) if badge < 100 else "99+"
        box = pen.textbbox((0, 0), text)
        width, height = box[2] - box[0], box[3] - box[1]
        pen.text((48 - width / 2, 47 - height / 2 - box[1]), text, fill=COLOURS[colour])
    return image
