"""Reading and writing COCO keypoint datasets.

On-disk layout written by posesynth (and read from any COCO keypoint file)::

    DIR/annotations.json     COCO: images, annotations (keypoints [x, y, v] * K, bbox, ...),
                             categories (keypoint names, 1-based skeleton, and posesynth's
                             'flip_pairs', 'sigmas' and 'masks' so a custom layout round-trips)
    DIR/images/<file_name>   the images
    DIR/masks/...            per-image masks as 8-bit PNG (non-zero = inside), referenced from
                             the image entry: {"masks": {"seatbelt": "masks/000001_seatbelt.png"}}
                             (paths relative to DIR)

Video datasets: an image entry may carry ``"video_id"`` (PoseTrack's ``"vid_id"`` is read as
a synonym) and ``"frame_id"`` (the 0-based frame index), and an annotation ``"track_id"``.

Bad input gets a :class:`~posesynth.errors.DatasetError` naming the file and the annotation.
``on_error="raise"`` fails at the first problem; ``on_error="skip"`` drops the images (or
annotations) with a problem, counts them by kind and says so (see
:mod:`posesynth.datasets.reading`).  Labelled keypoints outside their image follow
``out_of_frame`` (default: unlabelled, counted and said once).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import cv2
import numpy as np

from ..errors import DatasetError, LayoutError
from ..io import atomic_write_json
from .convert import conversion_matrix, convert_keypoints, match_keypoints
from .layouts import (BUILTIN_LAYOUTS, COCO17, DEFAULT_SIGMA, KeypointLayout, canonical_name, get_layout,
                      infer_flip_pairs, infer_sigmas)
from .reading import (COORD_TOLERANCE, ErrorPolicy, ImageResolver, InfoNote, OutOfFramePolicy, OutOfFrameStats,
                      ProblemLog, ReaderBase, apply_out_of_frame, check_policies, image_size, out_of_frame_points,
                      read_image, size_problem, sizes_of)
from .sample import Sample, mask_labelled

__all__ = ["CocoKeypointDataset", "CocoWriter", "CocoJournalWriter", "write_coco", "layout_from_category", "derive_layout",
           "resolve_layouts", "ErrorPolicy", "COORD_TOLERANCE"]

log = logging.getLogger(__name__)

_COCO_SKELETON_1B = {frozenset((a + 1, b + 1)) for a, b in COCO17.limbs}


def _skeleton_problem(skeleton: Any, k: int) -> "str | None":
    """Why a category's 1-based ``skeleton`` does not fit ``k`` keypoints (None if it fits)."""
    def is_pair(p: Any) -> bool:
        return isinstance(p, (list, tuple)) and len(p) == 2 and all(
            isinstance(i, int) and not isinstance(i, bool) for i in p)

    if not isinstance(skeleton, list) or not all(is_pair(p) for p in skeleton):
        return "it is not a list of [a, b] index pairs"
    bad = [list(p) for p in skeleton if not (1 <= p[0] <= k and 1 <= p[1] <= k) or p[0] == p[1]]
    if not bad:
        return None
    idx = [i for p in skeleton for i in p]
    shown = ", ".join(str(p) for p in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    why = f"limb{'s' if len(bad) > 1 else ''} {shown} name{'' if len(bad) > 1 else 's'} keypoints outside 1..{k}"
    if min(idx) == 0 and max(idx) <= k - 1:
        why += "; it looks 0-based (COCO skeletons count keypoints from 1)"
    elif {frozenset(p) for p in skeleton} == _COCO_SKELETON_1B and k != 17:
        why += "; it is COCO's 17-keypoint skeleton"
    return why


def derive_layout(cat: dict[str, Any], source: str) -> tuple[KeypointLayout, list[str]]:
    """The layout a COCO category describes, and notes on what could not be taken from it.

    A built-in layout is returned when the keypoint names match it (normalised names, same
    order).  Otherwise the layout is built from the category: its 1-based ``skeleton`` gives
    the limbs (a skeleton that does not fit the keypoints is ignored, with a note), its
    ``flip_pairs`` and ``sigmas`` are used when present (posesynth writes them), else flip
    pairs are inferred from left/right names and OKS sigmas from COCO's per-joint values.
    """
    names = cat.get("keypoints")
    cname = cat.get("name", "?")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise DatasetError(f"{source}: category '{cname}' has no list of 'keypoints' names", "malformed category")
    canon = [canonical_name(n) for n in names]
    masks = cat.get("masks") if isinstance(cat.get("masks"), list) else None
    for lay in BUILTIN_LAYOUTS.values():
        if [canonical_name(n) for n in lay.keypoints] == canon:
            m = list(lay.masks) if masks is None else masks
            return (lay if list(lay.masks) == m else lay.with_masks(m)), []
    k = len(names)
    notes: list[str] = []
    if len(set(names)) != k:
        dup = sorted({n for n in names if names.count(n) > 1})
        raise DatasetError(f"{source}: category '{cname}' names keypoints {dup} more than once", "malformed category")
    skeleton = cat.get("skeleton", [])
    problem = _skeleton_problem(skeleton, k)
    limbs: list[list[int]] = []
    if problem:
        notes.append(f"{source}: the skeleton of category '{cname}' does not fit its {k} keypoints ({problem}): "
                     "skeleton ignored, so the layout has no limbs (PAFs); give the layout with --layout FILE.yaml")
    else:
        limbs = [[a - 1, b - 1] for a, b in skeleton]
    flip = cat.get("flip_pairs")
    if flip is not None:
        try:
            KeypointLayout("check", tuple(names), (), tuple(tuple(p) for p in flip))
        except (LayoutError, TypeError, ValueError):
            notes.append(f"{source}: category '{cname}' has unusable 'flip_pairs' {flip}: inferred from names instead")
            flip = None
    unpaired: list[str] = []
    if flip is None:
        flip, unpaired = infer_flip_pairs(names)
    sigmas = cat.get("sigmas")
    if not (isinstance(sigmas, list) and len(sigmas) == k
            and all(isinstance(s, (int, float)) and s > 0 for s in sigmas)):
        sigmas, missing = infer_sigmas(names)
        if missing:
            notes.append(InfoNote(f"{source}: no COCO OKS sigma for {', '.join(repr(n) for n in missing)}: "
                                  f"using {DEFAULT_SIGMA}"))
    d = {"name": cat.get("layout") or cname or "custom", "keypoints": names, "limbs": limbs,
         "flip_pairs": flip, "sigmas": sigmas, "masks": masks or []}
    try:
        lay = KeypointLayout.from_dict(d, source=source)
    except LayoutError as e:
        raise DatasetError(f"{source}: category '{cname}': {e}", "malformed category") from None
    if not lay.can_flip:
        sided = unpaired or [n for i, n in enumerate(names) if i not in {j for p in lay.flip_pairs for j in p}
                             and canonical_name(n).startswith(("left", "right"))]
        notes.append(f"{source}: no flip pair for {', '.join(repr(n) for n in sided[:6])}"
                     f"{' and more' if len(sided) > 6 else ''}: horizontal flip is off for this dataset")
    return lay, notes


def layout_from_category(cat: dict[str, Any], source: str) -> KeypointLayout:
    """The layout a COCO category describes (see :func:`derive_layout`); notes are logged."""
    lay, notes = derive_layout(cat, source)
    for n in notes:
        log.warning("%s", n)
    return lay


def resolve_layouts(file_layout: "KeypointLayout | None", target: KeypointLayout,
                    source: str) -> tuple[KeypointLayout, bool, list[str]]:
    """How data in ``file_layout`` is read as ``target`` (a layout given with ``--layout``).

    Returns ``(source_layout, convert, notes)``: the same keypoint names (normalised) read as
    ``target`` directly; otherwise keypoints are converted by name where at least half of
    ``target``'s keypoints are found; otherwise, with as many keypoints, they are taken in
    order.  ``file_layout=None`` (no names in the file) takes them in order.
    """
    if file_layout is None:
        return target, False, []
    if [canonical_name(n) for n in file_layout.keypoints] == [canonical_name(n) for n in target.keypoints]:
        return target, False, []
    try:
        conversion_matrix(file_layout, target)
    except LayoutError as e:
        if file_layout.num_keypoints == target.num_keypoints:
            return target, False, [f"{source}: its keypoint names do not match layout '{target.name}': its "
                                   f"{target.num_keypoints} keypoints are taken in order as {target.name}'s"]
        raise LayoutError(f"{source}: {e}") from None
    _, missing = match_keypoints(file_layout, target)
    notes = []
    if missing:
        notes.append(InfoNote(f"{source}: converting to '{target.name}' by keypoint name: the data has no "
                              f"{', '.join(repr(n) for n in missing)}; they stay unlabelled"))
    return file_layout, True, notes


@dataclass
class _Entry:
    image: dict[str, Any]
    keypoints: np.ndarray          # (P, K_src, 3)
    ann_ids: list[int] = field(default_factory=list)
    path: "Path | None" = None     # the image file, once found
    size: "tuple[int, int] | None" = None   # (width, height), from the JSON or the file's header


class CocoKeypointDataset(ReaderBase):
    """A COCO keypoint dataset as a sequence of :class:`Sample`.

    Args:
        path: a dataset folder holding ``annotations.json``, or a COCO JSON file.
        image_dir: folder of the images.  Default: looked up as
            :class:`~posesynth.datasets.reading.ImageResolver` says (``R/images``, ``R``, then
            ``R``'s parent, where ``R`` is the dataset or JSON folder).
        layout: the layout samples are returned in (name, YAML path or object).  Default: the
            dataset's own, from its category.  When given, it replaces the category entirely:
            the file's keypoints are read as this layout when their names match it (or, with
            as many keypoints, in order), else converted by name.
        on_error: ``"raise"`` (fail fast) or ``"skip"`` (drop bad images and count them).
        check_files: verify at load time that every image and mask exists, is not truncated and
            has the size the JSON states (reads headers and the file's last kilobyte only).
        out_of_frame: what happens to labelled keypoints outside their image (``"unlabel"``,
            ``"clip"``, ``"skip-person"``, ``"skip-image"``).
        allow_empty: when False, a dataset with no usable image raises one
            :class:`DatasetError` with the problem counts.

    Attributes:
        entries: the usable images (``.image`` the COCO image dict, ``.keypoints`` ``(P, K, 3)``
            in the source layout, ``.ann_ids``, ``.path``, ``.size``).
        coco: the pycocotools index of the file's image entries with a unique id and the
            annotations that point to them.
        layout, source_layout: the layout samples come in, and the file's own.
        errors, skipped: the problems found (one message each) and their number.
        notes: what was said once (inferred layout, out-of-frame counts, conversion).
        videos: the file's top-level ``"videos"`` list (written by ``extract`` and ``convert``:
            ``id``, ``file_name``, ``width``, ``height``, ``fps`` of the clip, ``every``).
    """

    def __init__(self, path: "str | Path", image_dir: "str | Path | None" = None,
                 layout: "str | Path | KeypointLayout | None" = None, on_error: ErrorPolicy = "raise",
                 check_files: bool = True, out_of_frame: OutOfFramePolicy = "unlabel",
                 allow_empty: bool = True) -> None:
        check_policies(on_error, out_of_frame)
        path = Path(path)
        if path.is_dir():
            self.root, self.ann_file = path, path / "annotations.json"
        else:
            self.root, self.ann_file = path.parent, path
        self._resolver = ImageResolver(self.root, image_dir)
        self.on_error = on_error
        self.out_of_frame = out_of_frame
        self.problems = ProblemLog(str(self.ann_file), on_error)
        self._oof = OutOfFrameStats(out_of_frame)
        data = self._read_json()
        cat = self._person_category(data)
        self._setup_layouts(cat, layout)
        # masks the file's category declares (posesynth writes them): an image without a file for
        # one has it empty; a mask it does not declare, or an image entry's explicit null, is
        # unlabelled (real frames without a seatbelt mask)
        self._declared_masks = {m for m in cat.get("masks") or [] if isinstance(m, str)} \
            if isinstance(cat.get("masks"), list) else set()
        images, anns = self._clean(data, cat.get("id"))
        self.coco = self._index({"images": images, "annotations": [a for a in anns if "id" in a],
                                 "categories": [c for c in data["categories"] if isinstance(c, dict) and "id" in c]})
        self.num_listed = len(data["images"])
        self.videos = [v for v in data.get("videos") or [] if isinstance(v, dict)]   # extract/convert: id, fps, every
        self.entries = self._collect(images, anns, cat.get("id"))
        if check_files:
            self.entries = [e for e in self.entries if self._check_files(e)]
        self.entries = self._apply_out_of_frame(self.entries)
        self._failed_at_runtime: set[int] = set()
        msg = self._oof.message(str(self.ann_file))
        if msg:
            self.problems.note(msg)
        self.problems.finish()
        if not self.entries and not allow_empty:
            raise DatasetError(self.empty_message(), "empty dataset")

    # ---- loading -----------------------------------------------------------------------
    @property
    def image_dir(self) -> Path:
        """The folder images are read from (``--image-dir``, else the one found)."""
        return self._resolver.default_dir

    @property
    def dropped_out_of_frame(self) -> int:
        """Images dropped by ``out_of_frame="skip-image"``."""
        return self._oof.images if self.out_of_frame == "skip-image" else 0

    def empty_message(self) -> str:
        parts = []
        if self.errors:
            parts.append(f"{self.problems.summary()} skipped")
        if self.dropped_out_of_frame:
            parts.append(f"{self.dropped_out_of_frame} dropped for keypoints outside the image "
                         "(--out-of-frame skip-image)")
        why = "; ".join(parts) if parts else ("the file lists no images" if not self.num_listed
                                               else "no image has a usable entry")
        return f"{self.ann_file}: no usable images ({self.num_listed} listed; {why})"

    def _fail(self, msg: str, kind: str = "dataset") -> None:
        self.problems.fail(msg, kind)

    def _read_json(self) -> dict[str, Any]:
        f = self.ann_file
        if not f.exists():
            raise DatasetError(f"{f}: annotation file not found", "missing file")
        try:
            with open(f, "rb") as fh:
                data = json.load(fh)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{f}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}",
                               "malformed JSON") from None
        except (OSError, UnicodeDecodeError) as e:
            raise DatasetError(f"{f}: cannot read ({e})", "unreadable file") from None
        if not isinstance(data, dict):
            raise DatasetError(f"{f}: not a COCO file (top level is a {type(data).__name__}, expected an object)",
                               "malformed JSON")
        for key in ("images", "annotations", "categories"):
            if not isinstance(data.get(key), list):
                raise DatasetError(f"{f}: not a COCO keypoint file: '{key}' must be a list", "malformed JSON")
        return data

    def _index(self, data: dict[str, Any]):
        from pycocotools.coco import COCO

        coco = COCO()
        coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco

    def _person_category(self, data: dict[str, Any]) -> dict[str, Any]:
        cats = [c for c in data["categories"] if isinstance(c, dict) and c.get("keypoints")]
        if not cats:
            raise DatasetError(f"{self.ann_file}: no category with keypoint names", "malformed category")
        return cats[0]

    def _setup_layouts(self, cat: dict[str, Any], layout: "str | Path | KeypointLayout | None") -> None:
        src = str(self.ann_file)
        if layout is None:
            self.source_layout, notes = derive_layout(cat, src)
            self.layout, self._convert = self.source_layout, False
        else:
            self.layout = get_layout(layout)
            try:
                file_layout, _ = derive_layout(cat, src)   # the category's own notes do not matter now
            except DatasetError:
                file_layout = None
            self.source_layout, self._convert, notes = resolve_layouts(file_layout, self.layout, src)
        for n in notes:
            self.problems.note(n)

    def _clean(self, data: dict[str, Any], cat_id: Any) -> tuple[list[dict], list[dict]]:
        """The image entries with a unique id, and the annotations of the keypoint category
        that point to one of them; everything else is a problem under the error policy."""
        f = self.ann_file
        by_id: dict[Any, list[dict]] = {}
        unsized: set = set()   # ids of entries dropped for their stated size: their annotations go quietly
        for i, im in enumerate(data["images"]):
            if not isinstance(im, dict) or not {"id", "file_name"} <= im.keys() or \
                    not isinstance(im["id"], (int, str)) or not isinstance(im["file_name"], str):
                self._fail(f"{f}: images[{i}] needs an 'id' and a 'file_name': image dropped", "malformed image entry")
                continue
            why = size_problem(im)
            if why:
                self._fail(f"{f}: image {im['id']} ('{im['file_name']}'): {why}: image dropped with its annotations",
                           "malformed image entry")
                unsized.add(im["id"])
                continue
            by_id.setdefault(im["id"], []).append(im)
        dups = {k for k, v in by_id.items() if len(v) > 1}
        for k in sorted(dups, key=str):
            names = ", ".join(repr(im["file_name"]) for im in by_id[k][:3])
            self._fail(f"{f}: image id {k} is used by {len(by_id[k])} image entries ({names}): "
                       "all dropped with their annotations", "duplicate image id")
        images = [v[0] for k, v in by_id.items() if k not in dups]
        known = {im["id"] for im in images}
        anns = []
        for i, a in enumerate(data["annotations"]):
            if not isinstance(a, dict):
                self._fail(f"{f}: annotations[{i}] is not an object: dropped", "malformed annotation")
                continue
            if cat_id is not None and "category_id" in a and a["category_id"] != cat_id:
                if "id" in a and isinstance(a.get("image_id"), (int, str)) and a["image_id"] in known:
                    anns.append(a)   # another category: kept in the index, not read as people
                continue
            iid = a.get("image_id")
            aid = a.get("id", f"[{i}]")
            if not isinstance(iid, (int, str)) or isinstance(iid, bool):
                self._fail(f"{f}: annotation {aid} has no usable 'image_id': dropped", "malformed annotation")
                continue
            if "id" in a and (not isinstance(a["id"], (int, str)) or isinstance(a["id"], bool)):
                self._fail(f"{f}: annotations[{i}] has an 'id' that is not a number or a string ({a['id']!r}): "
                           "dropped", "malformed annotation")
                continue
            if iid in dups or (iid in unsized and iid not in known):
                continue
            if iid not in known:
                self._fail(f"{f}: annotation {aid} refers to image id {iid}, which is not in 'images': "
                           "annotation dropped", "unknown image id")
                continue
            if a.get("category_id") != cat_id:
                a = dict(a, category_id=cat_id)
            anns.append(a)
        return self._drop_duplicate_annotation_ids(images, anns)

    def _drop_duplicate_annotation_ids(self, images: list[dict], anns: list[dict]) -> tuple[list[dict], list[dict]]:
        """An annotation id used more than once: references by id (the index, areas, track ids)
        are ambiguous, and a person annotated twice is a phantom second person, so every image
        holding one of those annotations is dropped with its annotations, one problem per id."""
        by_id: dict[Any, list[dict]] = {}
        for a in anns:
            if "id" in a:
                by_id.setdefault(a["id"], []).append(a)
        dups = {k: v for k, v in by_id.items() if len(v) > 1}
        if not dups:
            return images, anns
        drop: set = set()
        for k in sorted(dups, key=str):
            held = sorted({a["image_id"] for a in dups[k]}, key=str)
            drop.update(held)
            self._fail(f"{self.ann_file}: annotation id {k} is used by {len(dups[k])} annotations (of image"
                       f"{'s' if len(held) > 1 else ''} {', '.join(str(h) for h in held[:5])}): "
                       f"image{'s' if len(held) > 1 else ''} dropped with {'their' if len(held) > 1 else 'its'} "
                       "annotations", "duplicate annotation id")
        return ([im for im in images if im["id"] not in drop], [a for a in anns if a["image_id"] not in drop])

    def _collect(self, images: list[dict], anns: list[dict], cat_id: Any) -> list[_Entry]:
        k = self.source_layout.num_keypoints
        people: dict[Any, list[dict]] = {}
        for a in anns:   # crowd regions (iscrowd 1) are not people; an iscrowd that is not 0/1 is a bad annotation
            if a.get("category_id") == cat_id and _crowd_flag(a) != 1:
                people.setdefault(a["image_id"], []).append(a)
        # every annotation's keypoints in one array (checked at once); odd ones one by one
        images = sorted(images, key=lambda im: (isinstance(im["id"], str), im["id"]))
        flat = [a for im in images for a in people.get(im["id"], [])]
        arr = np.full((len(flat), k, 3), np.nan)
        bad: dict[int, str] = {}
        shaped = [j for j, a in enumerate(flat)
                  if isinstance(a.get("keypoints"), list) and len(a["keypoints"]) == 3 * k]
        # numbers only: numpy would turn "12.5" into 12.5 under a float dtype, so the values are
        # read without one first (all numbers: a numeric array; any string or other value: not)
        raw = _numeric_rows([flat[j]["keypoints"] for j in shaped], 3 * k)
        if raw is not None:
            arr[shaped] = raw.reshape(-1, k, 3)
        else:
            for j in shaped:
                row = _numeric_rows([flat[j]["keypoints"]], 3 * k)
                if row is None:
                    odd = next(v for v in flat[j]["keypoints"]
                               if isinstance(v, bool) or not isinstance(v, (int, float)))
                    bad[j] = f"keypoints must be numbers, found {odd!r} ({type(odd).__name__})"
                else:
                    arr[j] = row.reshape(k, 3)
        for j, a in enumerate(flat):
            if j in bad:
                continue
            if _crowd_flag(a) is None:
                bad[j] = f"iscrowd must be 0 or 1, not {a.get('iscrowd')!r}"
                continue
            kp = a.get("keypoints")
            if "id" not in a:
                bad[j] = "has no 'id'"
            elif kp is None:          # a person without keypoint labels (e.g. OCHuman): all unlabelled
                arr[j] = 0.0
            elif not isinstance(kp, list) or len(kp) != 3 * k:
                n = len(kp) if isinstance(kp, list) else "no list of"
                bad[j] = (f"has {n} keypoint values, layout '{self.source_layout.name}' expects {3 * k} "
                          f"({k} keypoints x [x, y, v])")
        ok_rows = np.array([j not in bad for j in range(len(flat))], bool)
        finite = np.isfinite(arr).all(axis=2)                       # (N, K)
        vis_ok = np.isin(arr[..., 2], (0, 1, 2))
        for j in np.nonzero(ok_rows & ~(finite.all(1) & vis_ok.all(1)))[0]:
            kp = flat[j]["keypoints"]
            if not finite[j].all():
                q = int(np.argmin(finite[j]))
                bad[j] = f"keypoint {q} ('{self.source_layout.keypoints[q]}') is NaN or infinite: {kp[3 * q:3 * q + 3]}"
            else:
                q = int(np.argmin(vis_ok[j]))
                bad[j] = (f"keypoint {q} ('{self.source_layout.keypoints[q]}') has visibility {arr[j, q, 2]:g}, "
                          "expected 0, 1 or 2")
        entries, j, unlabelled = [], 0, 0
        for im in images:   # (sorted by id)
            mine = people.get(im["id"], [])
            rows = range(j, j + len(mine))
            j += len(mine)
            if im.get("is_labeled") is False:   # PoseTrack: a frame nobody labelled is not background
                unlabelled += 1
                continue
            wrong = [r for r in rows if r in bad]
            if wrong:
                r = wrong[0]
                more = f" (and {len(wrong) - 1} more annotations)" if len(wrong) > 1 else ""
                self._fail(f"{self.ann_file}: image {im['id']} ('{im['file_name']}'), annotation "
                           f"{flat[r].get('id', '?')}: {bad[r]}{more}: image dropped", "bad annotation")
                continue
            kps = arr[rows.start:rows.stop].astype(np.float32) if mine else np.zeros((0, k, 3), np.float32)
            entries.append(_Entry(im, kps, [a["id"] for a in mine], None, sizes_of([im])[0]))
        if unlabelled:
            self.problems.note(InfoNote(f"{self.ann_file}: {unlabelled} image{'s' if unlabelled > 1 else ''} marked "
                                        "'is_labeled': false left out (their people have no labels)"))
        return entries

    def _apply_out_of_frame(self, entries: list[_Entry]) -> list[_Entry]:
        # find the images with a point outside, all at once; only those are touched
        sized = [e for e in entries if e.size is not None and len(e.keypoints)]
        hit: set[int] = set()
        if sized:
            kp = np.concatenate([e.keypoints for e in sized])                          # (sum P, K, 3)
            counts = [len(e.keypoints) for e in sized]
            wh = np.repeat(np.asarray([e.size for e in sized], np.float64), counts, axis=0)
            per_person = out_of_frame_points(kp, wh[:, :1], wh[:, 1:]).any(axis=1)
            per_image = np.add.reduceat(per_person, np.cumsum([0] + counts[:-1])) > 0
            hit = {id(e) for e, h in zip(sized, per_image) if h}
        out = []
        for e in entries:
            if id(e) not in hit:
                out.append(e)
                continue
            kp, keep, drop = self._oof.add(e.keypoints, *e.size)
            if drop:
                continue
            if not keep.all():
                e.ann_ids = [a for a, k in zip(e.ann_ids, keep) if k]
            e.keypoints = kp
            out.append(e)
        return out

    def _mask_paths(self, im: dict[str, Any]) -> list["Path | None"]:
        refs = im.get("masks") or {}
        if not isinstance(refs, dict):
            refs = {}
        return [self.root / refs[name] if isinstance(refs.get(name), str) else None for name in self.layout.masks]

    def _mask_labelled(self, im: dict[str, Any]) -> list[bool]:
        """Per mask of the layout: labelled (a file, or none where the category declares the
        mask: empty) or not (an explicit ``null``, or a mask the category does not declare)."""
        refs = im.get("masks") if isinstance(im.get("masks"), dict) else {}
        return [isinstance(refs.get(n), str) or (n not in refs and n in self._declared_masks)
                for n in self.layout.masks]

    def _where(self, im: dict[str, Any]) -> str:
        return f"image {im['id']} ('{im['file_name']}') of {self.ann_file}"

    def _check_files(self, e: _Entry) -> bool:
        im = e.image
        path = self._resolver.resolve(im["file_name"])
        if path is None:
            self._fail(f"{self._resolver.not_found(im['file_name'])} ({self._where(im)})", "missing image")
            return False
        e.path = path
        try:
            size = image_size(path, "image")
        except DatasetError as err:
            self._fail(f"{err} ({self._where(im)})", err.kind)
            return False
        if e.size is not None and size != e.size:
            self._fail(f"{path}: image is {size[0]}x{size[1]} but {self.ann_file} says "
                       f"{e.size[0]}x{e.size[1]} (image {im['id']})", "image size mismatch")
            return False
        e.size = size
        for name, mpath in zip(self.layout.masks, self._mask_paths(im)):
            if mpath is None:
                continue
            try:
                msize = image_size(mpath, f"'{name}' mask")
            except DatasetError as err:
                self._fail(f"{err} ({self._where(im)})", err.kind.replace(f"'{name}' ", ""))
                return False
            if msize != size:
                self._fail(f"{mpath}: '{name}' mask is {msize[0]}x{msize[1]}, its image is "
                           f"{size[0]}x{size[1]} ({self._where(im)})", "mask size mismatch")
                return False
        return True

    # ---- access ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.entries)

    def image_ids(self) -> list[int]:
        return [int(e.image["id"]) if isinstance(e.image["id"], int) else e.image["id"] for e in self.entries]

    def annotations(self) -> list[np.ndarray]:
        """Every sample's people ``(P, K, 3)`` in :attr:`layout` (converted from the file's
        layout as :meth:`load` does), without decoding an image.  Keypoints outside an image
        whose size the file does not state are unlabelled only when it is decoded."""
        if not self._convert:
            return [e.keypoints.astype(np.float32, copy=True) for e in self.entries]
        return [convert_keypoints(e.keypoints, self.source_layout, self.layout) for e in self.entries]

    def image_path(self, index: int) -> Path:
        """The image file of sample ``index`` (raises :class:`DatasetError` if it is nowhere)."""
        e = self.entries[index]
        if e.path is None:
            e.path = self._resolver.resolve(e.image["file_name"])
            if e.path is None:
                raise DatasetError(f"{self._resolver.not_found(e.image['file_name'])} ({self._where(e.image)})",
                                   "missing image")
        return e.path

    def load(self, index: int) -> Sample:
        """Read sample ``index``; raises :class:`DatasetError` for a missing, truncated or
        unreadable file, or one whose decoded size is not the expected one."""
        e = self.entries[index]
        im = e.image
        path = self.image_path(index)
        try:
            rgb = read_image(path)
        except DatasetError as err:
            raise DatasetError(f"{err} ({self._where(im)})", err.kind) from None
        h, w = rgb.shape[:2]
        if e.size is not None and (w, h) != e.size:
            raise DatasetError(f"{path}: decoded image is {w}x{h}, expected {e.size[0]}x{e.size[1]} "
                               f"({self._where(im)})", "image size mismatch")
        masks = np.zeros((self.layout.num_masks, h, w), np.uint8)
        for i, (name, mpath) in enumerate(zip(self.layout.masks, self._mask_paths(im))):
            if mpath is None:
                continue
            try:
                m = read_image(mpath, cv2.IMREAD_GRAYSCALE)
            except DatasetError as err:
                raise DatasetError(f"{err} ('{name}' mask of {self._where(im)})",
                                   err.kind.replace("image", "mask")) from None
            if m.shape != (h, w):
                raise DatasetError(f"{mpath}: '{name}' mask is {m.shape[1]}x{m.shape[0]}, image is {w}x{h}",
                                   "mask size mismatch")
            masks[i] = m > 127
        kp, ids = e.keypoints, list(e.ann_ids)
        if e.size is None and len(kp):   # no size known before decoding: apply the policy quietly now
            kp, keep, _, drop = apply_out_of_frame(kp, w, h, "skip-person" if self.out_of_frame == "skip-image"
                                                   else self.out_of_frame)
            ids = [a for a, k in zip(ids, keep) if k]
        if self._convert:
            kp = convert_keypoints(kp, self.source_layout, self.layout)
        meta: dict[str, Any] = {"ann_ids": ids}
        if self.layout.num_masks:
            meta["mask_labelled"] = self._mask_labelled(im)
        vid = im.get("video_id", im.get("vid_id"))
        if vid is not None:
            meta["video_id"] = vid
        if im.get("frame_id") is not None:
            meta["frame_id"] = im["frame_id"]
        # each person's COCO area (OKS scale, pixels^2 of this image), None where the file has none
        areas = [_area_of(self.coco.anns[a]) for a in ids] if ids else []
        if any(a is not None for a in areas):
            meta["areas"] = areas
        tracks = [self.coco.anns[a].get("track_id") for a in ids] if ids else []
        if any(t is not None for t in tracks):
            meta["track_ids"] = tracks
        if isinstance(im.get("posesynth"), dict):
            meta.update(im["posesynth"])
        return Sample(rgb, kp.copy(), masks, int(im["id"]) if isinstance(im["id"], int) else im["id"],
                      im["file_name"], meta)


def _crowd_flag(ann: dict[str, Any]) -> "int | None":
    """An annotation's ``iscrowd`` as 0 or 1 (absent: 0; ``true``/``false`` accepted); None when
    it is anything else (``"no"``, 2, a list...)."""
    v = ann.get("iscrowd", 0)
    if isinstance(v, bool):
        return int(v)
    return int(v) if isinstance(v, (int, float)) and v in (0, 1) else None


def _numeric_rows(rows: list[list], n: int) -> "np.ndarray | None":
    """``(len(rows), n)`` float64 when every value of ``rows`` (lists of ``n`` values) is a
    number (booleans included, as JSON's ``true`` is 1), else None.  Vectorised: NumPy infers a
    numeric dtype only when every value is one."""
    if not rows:
        return np.zeros((0, n))
    try:
        a = np.asarray(rows)
    except (TypeError, ValueError):   # ragged: a nested list inside
        return None
    if a.dtype.kind not in "biuf" or a.shape != (len(rows), n):
        return None
    return a.astype(np.float64)


def _area_of(ann: dict[str, Any]) -> "float | None":
    """An annotation's ``area`` when it is a positive finite number (else None: unknown)."""
    a = ann.get("area")
    if isinstance(a, (int, float)) and not isinstance(a, bool) and np.isfinite(a) and a > 0:
        return float(a)
    return None


def _bbox(kp: np.ndarray, width: int, height: int, pad: float = 0.1) -> list[float]:
    vis = kp[:, 2] > 0
    if not vis.any():
        return [0.0, 0.0, 0.0, 0.0]
    x0, y0 = kp[vis, :2].min(0)
    x1, y1 = kp[vis, :2].max(0)
    px, py = (x1 - x0) * pad + 2, (y1 - y0) * pad + 2
    x0, y0 = max(x0 - px, 0.0), max(y0 - py, 0.0)
    x1, y1 = min(x1 + px, width - 1.0), min(y1 + py, height - 1.0)
    return [round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)]


class CocoWriter:
    """Writes a COCO keypoint dataset folder sample by sample; :meth:`close` writes the JSON.

    Images go to ``DIR/images/NNNNNN.jpg`` (or .png), masks to ``DIR/masks/NNNNNN_<name>.png``
    and ``DIR/annotations.json`` is written atomically, so it is always valid on disk.
    Bounding boxes come from ``sample.meta["bboxes"]`` (``(P, 4)`` x, y, w, h) when present,
    else from the labelled keypoints with 10% padding.  ``area`` is ``sample.meta["areas"][p]``
    (the source annotation's) where known, else the box's area.
    """

    def __init__(self, root: "str | Path", layout: KeypointLayout, image_ext: str = ".jpg",
                 jpeg_quality: int = 95, info: "dict[str, Any] | None" = None,
                 ann_name: str = "annotations.json", resume: bool = False) -> None:
        self.root = Path(root)
        self.ann_name = ann_name
        self.layout = layout
        self.image_ext = image_ext
        self.jpeg_quality = jpeg_quality
        (self.root / "images").mkdir(parents=True, exist_ok=True)
        if layout.num_masks:
            (self.root / "masks").mkdir(parents=True, exist_ok=True)
        self.info = {"description": "written by posesynth", **(info or {})}
        self.extra: dict[str, Any] = {}     # more top-level keys (e.g. "videos")
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        path = self.root / ann_name
        if resume and path.exists():
            try:
                old = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}: cannot resume, malformed JSON ({e.msg})") from None
            if old.get("categories", [{}])[0].get("keypoints") != list(layout.keypoints):
                raise DatasetError(f"{path}: cannot resume, it holds another layout")
            self.images, self.annotations = old["images"], old["annotations"]
            self.info = old.get("info", self.info)

    def category(self) -> dict[str, Any]:
        lay = self.layout
        return {"id": 1, "name": "person", "supercategory": "person", "layout": lay.name,
                "keypoints": list(lay.keypoints), "skeleton": [[a + 1, b + 1] for a, b in lay.limbs],
                "flip_pairs": [list(p) for p in lay.flip_pairs], "sigmas": list(lay.sigmas),
                "masks": list(lay.masks)}

    def write_files(self, sample: Sample, image_id: int, encoded: "bytes | None" = None) -> dict[str, Any]:
        """Write a sample's image and mask files (thread-safe); returns its image entry."""
        stem = f"{image_id:06d}"
        fname = stem + self.image_ext
        if encoded is None:
            encoded = encode_image(sample.image, self.image_ext, self.jpeg_quality)
        (self.root / "images" / fname).write_bytes(encoded)
        entry: dict[str, Any] = {"id": image_id, "file_name": fname, "width": sample.width, "height": sample.height}
        if self.layout.num_masks:
            refs = {}
            for name, m, labelled in zip(self.layout.masks, sample.masks, mask_labelled(sample)):
                if not labelled:   # unlabelled in the source: an explicit null keeps it unlabelled
                    refs[name] = None
                    continue
                rel = f"masks/{stem}_{name}.png"
                ok, buf = cv2.imencode(".png", (np.asarray(m) > 0).astype(np.uint8) * 255)
                (self.root / rel).write_bytes(buf.tobytes())
                refs[name] = rel
            entry["masks"] = refs
        return entry

    def add(self, sample: Sample, image_id: "int | None" = None, encoded: "bytes | None" = None,
            entry: "dict[str, Any] | None" = None) -> int:
        """Write one sample's files (unless ``entry`` says they are written) and record its
        entries; returns its image id."""
        image_id = int(image_id if image_id is not None else len(self.images) + 1)
        if entry is None:
            entry = self.write_files(sample, image_id, encoded)
        h, w = sample.height, sample.width
        extra = {k: sample.meta[k] for k in ("provenance", "scene") if sample.meta.get(k)}
        if extra:
            entry["posesynth"] = extra
        self.images.append(entry)
        boxes = sample.meta.get("bboxes")
        areas = sample.meta.get("areas")
        if areas is not None and len(areas) != sample.num_people:
            areas = None
        for p, kp in enumerate(sample.keypoints):
            bbox = [round(float(v), 2) for v in boxes[p]] if boxes is not None else _bbox(kp, w, h)
            flat = [round(float(v), 3) if i % 3 < 2 else int(v) for i, v in enumerate(kp.reshape(-1))]
            area = areas[p] if areas is not None and areas[p] is not None else bbox[2] * bbox[3]
            ann = {"id": len(self.annotations) + 1, "image_id": image_id, "category_id": 1,
                   "keypoints": flat, "num_keypoints": int((kp[:, 2] > 0).sum()), "bbox": bbox,
                   "area": round(float(area), 2), "iscrowd": 0}
            if sample.meta.get("provenance"):
                ann["provenance"] = sample.meta["provenance"]
            self.annotations.append(ann)
        return image_id

    def to_dict(self) -> dict[str, Any]:
        return {"info": self.info, "licenses": [], "categories": [self.category()],
                "images": self.images, "annotations": self.annotations, **self.extra}

    def close(self) -> Path:
        """Write the annotation file atomically (may be called repeatedly to checkpoint)."""
        path = self.root / self.ann_name
        atomic_write_json(path, self.to_dict())
        return path


class CocoJournalWriter(CocoWriter):
    """A :class:`CocoWriter` for long, resumable jobs: each :meth:`add` appends one line
    ``{"image": entry, "annotations": [...]}`` to ``DIR/<ann stem>.journal.jsonl`` (flushed to
    the OS at once, fsynced by :meth:`sync`), so the cost of recording an image does not grow
    with the dataset.  :meth:`close` writes the annotation file atomically from the records
    (images sorted by id, annotation ids 1..n in that order, so the file depends on the set of
    records, not on the order or the sessions they were written in) and, with
    ``finished=True``, removes the journal.

    Resuming (``resume=True``) reads the journal, dropping a last line cut short by a crash
    (and truncating the file there); without a journal it reads a finished annotation file.
    Mutating ``images``/``annotations`` after :meth:`add` is not supported.
    """

    def __init__(self, root: "str | Path", layout: KeypointLayout, image_ext: str = ".jpg",
                 jpeg_quality: int = 95, info: "dict[str, Any] | None" = None,
                 ann_name: str = "annotations.json", resume: bool = False) -> None:
        self.journal = Path(root) / (Path(ann_name).stem + ".journal.jsonl")
        self._records: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
        self._fh = None
        have_journal = resume and self.journal.exists()
        super().__init__(root, layout, image_ext, jpeg_quality, info, ann_name, resume and not have_journal)
        if have_journal:
            self._read_journal()
        else:
            by_image: dict[Any, list[dict[str, Any]]] = {}
            for a in self.annotations:
                by_image.setdefault(a["image_id"], []).append({k: v for k, v in a.items() if k != "id"})
            self._records = [(im, by_image.get(im["id"], [])) for im in self.images]
        self._seeded = have_journal   # a journal holding every record so far

    def _read_journal(self) -> None:
        path = self.journal
        data = path.read_bytes()
        end = data.rfind(b"\n") + 1        # a last line without its newline was cut short by a crash
        for n, line in enumerate(data[:end].splitlines(), 1):
            try:
                rec = json.loads(line)
                im, anns = rec["image"], rec["annotations"]
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
                raise DatasetError(f"{path}: cannot resume, line {n} is damaged ({e.__class__.__name__}); "
                                   "remove the output folder and start again") from None
            self._records.append((im, anns))
            self.images.append(im)
            self.annotations.extend(anns)
        if end < len(data):
            with open(path, "r+b") as f:
                f.truncate(end)

    def _append(self, lines: list[bytes]) -> None:
        if self._fh is None:
            self._fh = open(self.journal, "ab")
        self._fh.write(b"".join(lines))
        self._fh.flush()

    @staticmethod
    def _line(im: dict[str, Any], anns: list[dict[str, Any]]) -> bytes:
        return (json.dumps({"image": im, "annotations": anns}) + "\n").encode("utf-8")

    def add(self, sample: Sample, image_id: "int | None" = None, encoded: "bytes | None" = None,
            entry: "dict[str, Any] | None" = None) -> int:
        """Record one sample (its files are written unless ``entry`` says they are) with one
        appended journal line; returns its image id."""
        n_ann = len(self.annotations)
        image_id = super().add(sample, image_id, encoded, entry)
        anns = [{k: v for k, v in a.items() if k != "id"} for a in self.annotations[n_ann:]]
        lines = [] if self._seeded else [self._line(im, a) for im, a in self._records]
        self._seeded = True
        self._records.append((self.images[-1], anns))
        self._append(lines + [self._line(self.images[-1], anns)])
        return image_id

    def sync(self) -> None:
        """Make the journal durable (fsync): what it lists survives a power cut."""
        if self._fh is not None:
            os.fsync(self._fh.fileno())

    def to_dict(self) -> dict[str, Any]:
        order = sorted(range(len(self._records)), key=lambda i: self._records[i][0]["id"])
        images, anns = [], []
        for i in order:
            im, a = self._records[i]
            images.append(im)
            base = len(anns)
            anns.extend([{"id": base + j + 1, **x} for j, x in enumerate(a)])
        return {"info": self.info, "licenses": [], "categories": [self.category()], "images": images,
                "annotations": anns}

    def close(self, finished: bool = True) -> Path:
        """Write the annotation file atomically from the records; with ``finished`` the journal
        is then removed (else it stays, and a rerun continues from it)."""
        if self._fh is not None:
            self.sync()
        path = super().close()
        if finished:
            if self._fh is not None:
                self._fh.close()
                self._fh = None
            self.journal.unlink(missing_ok=True)
            self._seeded = False
        return path


def encode_image(rgb: np.ndarray, ext: str = ".jpg", jpeg_quality: int = 95) -> bytes:
    """Encode an RGB uint8 image to JPEG/PNG bytes."""
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if ext in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(ext, cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise DatasetError(f"cannot encode image as {ext}")
    return buf.tobytes()


def write_coco(root: "str | Path", samples: Iterable[Sample], layout: KeypointLayout,
               image_ext: str = ".jpg") -> Path:
    """Write ``samples`` as a COCO dataset folder; returns the annotation file's path."""
    w = CocoWriter(root, layout, image_ext=image_ext)
    for s in samples:
        w.add(s)
    return w.close()
