"""Run: PYTHONPATH=.:SAMMedAuto:Testing/slicer .venv/bin/python scripts/make_auto_screenshot.py [PROMPT_SLICE]

Propagate the liver of the shared CT from one prompted axial slice through SAMMedAutoLib (real MRML, LiteMedSAM),
accept it, and draw Resources/Screenshots/auto.png from the segmentation node (numpy + PIL)."""

import json
import sys
import time
from pathlib import Path

import mrml
import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont
from SAMMedAutoLib.AutoReview import AutoReview

from sammed import models
from sammed.cache import EmbeddingCache
from sammed.demo import example_paths
from sammed.geometry import largest_slice
from sammed.io import read_volume
from sammed.segmenter import Segmenter
from SAMMedLib import SegmentIO

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "out" / "screenshots"
OUT.mkdir(parents=True, exist_ok=True)

PROMPT = int(sys.argv[1]) if len(sys.argv) > 1 else 90
paths = example_paths()
ct, labels = read_volume(paths["ct"]), read_volume(paths["ct_labels"])
liver = labels.array_kji == 5
lg = SceneLogics = mrml.make_scene()
vnode = mrml.add_volume(lg.scene, ct, name="CT")
snode, (sid,) = mrml.add_segmentation(lg.scene, vnode, names=("liver",))
editor = SegmentIO.makeEditorLogic(lg.scene, appLogic=lg.app_logic)
segmenter = Segmenter(
    ct, models.load_backend("litemedsam", device="cpu"), cache=EmbeddingCache(disk_dir=OUT / "embeddings")
)
rows, cols = np.nonzero(liver[PROMPT])
seed = segmenter.segment(0, PROMPT, box_xyxy=[cols.min(), rows.min(), cols.max(), rows.max()]).mask_hw
user = np.zeros(ct.shape_kji, bool)
user[PROMPT] = seed
SegmentIO.setSegmentMask(snode, sid, user, vnode)
t0 = time.time()
review = AutoReview(snode, sid, vnode)
review.start(segmenter, axis=0, generator="sliding")
state = review.wait(1800)
seconds = time.time() - t0
rows_ = review.rows()
review.accept(editor)
acc = SegmentIO.segmentMask(snode, sid, vnode)
d = mrml.dice(acc, liver)
flagged = [r.index for r in rows_ if r.flagged]
counts = review.result.counts()
summary = {
    "prompt_slice": PROMPT,
    "state": state,
    "dice_vs_label": round(d, 4),
    "counts": counts,
    "flagged_below_0.8": flagged,
    "encoded": review.result.encoded,
    "seconds": round(seconds, 1),
    "slices": [[r.index, r.status, None if np.isnan(r.iou) else round(r.iou, 3)] for r in rows_],
}
print(json.dumps(summary))
(OUT / "auto_summary.json").write_text(json.dumps(summary, indent=1))
np.save(OUT / "auto_accepted.npy", acc)


# ---- picture, from the segmentation node's voxels (acc) on the CT grid
def window(a, lo=-160, hi=240):
    return (np.clip((a - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def overlay(grey, layers):
    rgb = np.stack([grey] * 3, -1).astype(float)
    for mask, color, alpha in layers:
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.array(color)
    return rgb.astype(np.uint8)


def outline(mask):
    m = mask.astype(bool)
    inner = m.copy()
    inner[1:-1, 1:-1] = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return m & ~inner


arr = ct.array_kji
sp = ct.spacing_ijk
gen_slices = review.generatedSlices()
gen = acc & SegmentIO.slicesMask(acc.shape, 0, gen_slices)
# coronal: array axis 1 at the liver's largest coronal slice; rows = K (flip so superior is up), cols = I
j = largest_slice(liver, 1)


# The CT's LPS direction is diag(-1, -1, 1): I increases towards the patient's right, J towards anterior. Slicer
# shows the patient's right on the left and anterior at the top, so columns (I) are flipped in both views and rows
# (J) in the axial view; coronal rows are K, flipped so that superior is up.
def cor(v):
    return np.flipud(v[:, j, :])[:, ::-1]


def axial(v):
    return v[::-1, ::-1]


cor_img = overlay(
    window(cor(arr)),
    [(cor(gen), (60, 200, 90), 0.45), (cor(user), (250, 200, 40), 0.8), (outline(cor(liver)), (230, 60, 60), 1.0)],
)
k = gen_slices[len(gen_slices) // 3] if gen_slices else PROMPT
ax_img = overlay(
    window(axial(arr[k])), [(axial(gen[k]), (60, 200, 90), 0.45), (outline(axial(liver[k])), (230, 60, 60), 1.0)]
)
iou_k = next(r.iou for r in rows_ if r.index == k)


def scaled(a, sy, sx, scale=3):
    im = Image.fromarray(a)
    return im.resize((int(a.shape[1] * sx * scale / 3), int(a.shape[0] * sy * scale / 3)), Image.Resampling.NEAREST)


A = scaled(ax_img, sp[1], sp[0])
C = scaled(cor_img, sp[2], sp[0])
pad, top = 12, 52
W = A.width + C.width + 3 * pad
H = max(A.height, C.height) + top + 64
canvas = Image.new("RGB", (W, H), (18, 20, 24))
canvas.paste(C, (pad, top))
canvas.paste(A, (2 * pad + C.width, top))
dr = ImageDraw.Draw(canvas)
try:
    font = ImageFont.truetype("DejaVuSans.ttf", 14)
except OSError:
    font = ImageFont.load_default()
dr.text(
    (pad, 8),
    f"Coronal: prompted axial slice {PROMPT} (yellow),\ngenerated slices (green)",
    fill=(230, 230, 230),
    font=font,
)
dr.text(
    (2 * pad + C.width, 8), f"Axial slice {k}: generated,\npredicted IoU {iou_k:.2f}", fill=(230, 230, 230), font=font
)
yy = top + max(A.height, C.height) + 8
dr.text(
    (pad, yy),
    f"SAMMedAuto sliding window, LiteMedSAM, liver from 1 prompted slice: volume Dice {d:.3f}\n"
    f"vs reference (red outline); {counts['generated']} slices generated, {len(flagged)} flagged (IoU < 0.8)",
    fill=(230, 230, 230),
    font=font,
)
dr.text(
    (pad, yy + 36),
    "From the accepted segment of the segmentation node (slicer-core MRML), shared example CT.",
    fill=(170, 170, 170),
    font=font,
)
out = ROOT / "Resources" / "Screenshots" / "auto.png"
out.parent.mkdir(parents=True, exist_ok=True)
canvas.save(out)
print("wrote", out, canvas.size)
