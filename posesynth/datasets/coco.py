"""Reading and writing COCO keypoint datasets.

On-disk layout written by posesynth (and read from any COCO keypoint file)::

    DIR/annotations.json     COCO: images, annotations (keypoints [x, y, v] * K, bbox, ...),
                             categories (keypoint names, 1-based skeleton, and posesynth's
                             'flip_pairs', 'sigmas' and 'masks' so a custom layout round-trips)
    DIR/images/<file_name>   the images
    DIR/masks/...            per-image masks as 8-bit PNG (non-zero = inside), referenced from
                             the image entry: {"masks": {"seatbelt": "masks/000001_seatbelt.png"}}
                             (paths relative to DIR)

Bad input gets a :class:`~posesynth.errors.DatasetError` naming the file and the annotation.
``on_error="raise"`` fails at the first problem; ``on_error="skip"`` drops the images with a
problem, warns once per problem, and counts them (:attr:`CocoKeypointDataset.skipped`).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DatasetError
from ..io import atomic_write_json
from .convert import conversion_matrix, convert_keypoints
from .layouts import BUILTIN_LAYOUTS, KeypointLayout, get_layout
from .sample import Sample

__all__ = ["CocoKeypointDataset", "CocoWriter", "write_coco", "layout_from_category", "ErrorPolicy"]

log = logging.getLogger(__name__)
ErrorPolicy = Literal["raise", "skip"]
COORD_TOLERANCE = 1.0  # labelled keypoints may lie this many pixels outside the image


def layout_from_category(cat: dict[str, Any], source: str) -> KeypointLayout:
    """The layout a COCO category describes: a built-in one when the names match."""
    names = cat.get("keypoints")
    if not isinstance(names, list) or not names:
        raise DatasetError(f"{source}: category '{cat.get('name')}' has no 'keypoints' names")
    for lay in BUILTIN_LAYOUTS.values():
        if list(lay.keypoints) == names:
            masks = cat.get("masks", list(lay.masks))
            return lay if list(lay.masks) == list(masks) else lay.with_masks(masks)
    d = {"name": cat.get("layout", cat.get("name", "custom")), "keypoints": names,
         "limbs": [[a - 1, b - 1] for a, b in cat.get("skeleton", [])],
         "flip_pairs": cat.get("flip_pairs", []), "sigmas": cat.get("sigmas"), "masks": cat.get("masks", [])}
    return KeypointLayout.from_dict(d, source=source)


@dataclass
class _Entry:
    image: dict[str, Any]
    keypoints: np.ndarray          # (P, K_src, 3)
    ann_ids: list[int] = field(default_factory=list)


class CocoKeypointDataset:
    """A COCO keypoint dataset as a sequence of :class:`Sample`.

    Args:
        path: a dataset folder holding ``annotations.json``, or a COCO JSON file.
        image_dir: folder of the images; default ``DIR/images`` if it exists, else the JSON's folder.
        layout: the layout samples are returned in (name, YAML path or object).  Default:
            the dataset's own.  A different layout is converted to where a conversion is
            defined (e.g. coco17 -> driver9).
        on_error: ``"raise"`` (fail fast) or ``"skip"`` (drop bad images and count them).
        check_files: verify at load time that every image and mask exists, is readable and has
            the size the JSON states (reads headers only).
    """

    def __init__(self, path: "str | Path", image_dir: "str | Path | None" = None,
                 layout: "str | Path | KeypointLayout | None" = None, on_error: ErrorPolicy = "raise",
                 check_files: bool = True) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
        path = Path(path)
        if path.is_dir():
            self.root, self.ann_file = path, path / "annotations.json"
        else:
            self.root, self.ann_file = path.parent, path
        if image_dir is None:
            image_dir = self.root / "images" if (self.root / "images").is_dir() else self.root
        self.image_dir = Path(image_dir)
        self.on_error = on_error
        self.errors: list[str] = []
        data = self._read_json()
        self.coco = self._index(data)
        cat = self._person_category(data)
        self.source_layout = layout_from_category(cat, str(self.ann_file))
        self.layout = self.source_layout if layout is None else get_layout(layout)
        self._convert = self.layout.keypoints != self.source_layout.keypoints
        if self._convert:
            conversion_matrix(self.source_layout, self.layout)  # fails early if undefined
        self.entries = self._collect(data, cat["id"])
        if check_files:
            self.entries = [e for e in self.entries if self._check_files(e)]
        self._failed_at_runtime: set[int] = set()

    # ---- loading -----------------------------------------------------------------------
    def _fail(self, msg: str) -> None:
        if self.on_error == "raise":
            raise DatasetError(msg)
        self.errors.append(msg)
        log.warning("skipping: %s", msg)

    @property
    def skipped(self) -> int:
        """Number of images dropped because of a problem (``on_error="skip"``)."""
        return len(self.errors)

    def _read_json(self) -> dict[str, Any]:
        f = self.ann_file
        if not f.exists():
            raise DatasetError(f"{f}: annotation file not found")
        try:
            with open(f, "rb") as fh:
                data = json.load(fh)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{f}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise DatasetError(f"{f}: cannot read ({e})") from None
        if not isinstance(data, dict):
            raise DatasetError(f"{f}: not a COCO file (top level is a {type(data).__name__}, expected an object)")
        for key in ("images", "annotations", "categories"):
            if not isinstance(data.get(key), list):
                raise DatasetError(f"{f}: not a COCO keypoint file: '{key}' must be a list")
        for i, im in enumerate(data["images"]):
            if not isinstance(im, dict) or not {"id", "file_name"} <= im.keys():
                raise DatasetError(f"{f}: images[{i}] needs 'id' and 'file_name'")
        for i, a in enumerate(data["annotations"]):
            if not isinstance(a, dict) or not {"id", "image_id", "keypoints"} <= a.keys():
                raise DatasetError(f"{f}: annotations[{i}] needs 'id', 'image_id' and 'keypoints'")
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
            raise DatasetError(f"{self.ann_file}: no category with keypoint names")
        return cats[0]

    def _collect(self, data: dict[str, Any], cat_id: int) -> list[_Entry]:
        k = self.source_layout.num_keypoints
        entries = []
        for img_id in sorted(self.coco.imgs):
            im = self.coco.imgs[img_id]
            where = f"{self.ann_file}: image {img_id} ('{im['file_name']}')"
            anns = [a for a in self.coco.imgToAnns.get(img_id, [])
                    if a.get("category_id", cat_id) == cat_id and not a.get("iscrowd", 0)]
            kps, ids, ok = [], [], True
            for a in anns:
                msg = self._check_annotation(a, k, im)
                if msg:
                    self._fail(f"{where}, annotation {a['id']}: {msg}")
                    ok = False
                    break
                kps.append(np.asarray(a["keypoints"], np.float32).reshape(k, 3))
                ids.append(a["id"])
            if ok:
                arr = np.stack(kps) if kps else np.zeros((0, k, 3), np.float32)
                entries.append(_Entry(im, arr, ids))
        return entries

    def _check_annotation(self, a: dict[str, Any], k: int, im: dict[str, Any]) -> "str | None":
        kp = a["keypoints"]
        if not isinstance(kp, list) or len(kp) != 3 * k:
            n = len(kp) if isinstance(kp, list) else "no list of"
            return (f"has {n} keypoint values, layout '{self.source_layout.name}' expects {3 * k} "
                    f"({k} keypoints x [x, y, v])")
        try:
            arr = np.asarray(kp, np.float64).reshape(k, 3)
        except (TypeError, ValueError):
            return "keypoints must be numbers"
        bad = ~np.isfinite(arr).all(axis=1)
        if bad.any():
            j = int(np.argmax(bad))
            return f"keypoint {j} ('{self.source_layout.keypoints[j]}') is NaN or infinite: {kp[3 * j:3 * j + 3]}"
        vis = arr[:, 2]
        if not np.isin(vis, (0, 1, 2)).all():
            j = int(np.argmax(~np.isin(vis, (0, 1, 2))))
            return f"keypoint {j} ('{self.source_layout.keypoints[j]}') has visibility {vis[j]:g}, expected 0, 1 or 2"
        w, h = im.get("width"), im.get("height")
        if w and h:
            t = COORD_TOLERANCE
            x, y = arr[:, 0], arr[:, 1]
            out = (vis > 0) & ((x < -t) | (y < -t) | (x > w - 1 + t) | (y > h - 1 + t))
            if out.any():
                j = int(np.argmax(out))
                return (f"keypoint {j} ('{self.source_layout.keypoints[j]}') at ({x[j]:g}, {y[j]:g}) "
                        f"is outside the {w}x{h} image")
        return None

    def _mask_paths(self, im: dict[str, Any]) -> list["Path | None"]:
        refs = im.get("masks") or {}
        return [self.root / refs[name] if name in refs else None for name in self.layout.masks]

    def _header_size(self, path: Path, what: str, where: str) -> "tuple[int, int] | None":
        """(width, height) read from the file's header, or None after reporting the problem."""
        try:
            with Image.open(path) as pil:
                return pil.size
        except FileNotFoundError:
            self._fail(f"{path}: {what} file not found ({where} of {self.ann_file})")
        except (UnidentifiedImageError, OSError) as err:
            self._fail(f"{path}: {what} is unreadable ({err.__class__.__name__}) ({where} of {self.ann_file})")
        return None

    def _check_files(self, e: _Entry) -> bool:
        im = e.image
        where = f"image {im['id']} ('{im['file_name']}')"
        path = self.image_dir / im["file_name"]
        size = self._header_size(path, "image", where)
        if size is None:
            return False
        if im.get("width") and im.get("height") and size != (im["width"], im["height"]):
            self._fail(f"{path}: image is {size[0]}x{size[1]} but {self.ann_file} says "
                       f"{im['width']}x{im['height']} ({where})")
            return False
        for name, mpath in zip(self.layout.masks, self._mask_paths(im)):
            if mpath is None:
                continue
            msize = self._header_size(mpath, f"'{name}' mask", where)
            if msize is None:
                return False
            if msize != size:
                self._fail(f"{mpath}: '{name}' mask is {msize[0]}x{msize[1]}, its image is "
                           f"{size[0]}x{size[1]} ({where} of {self.ann_file})")
                return False
        return True

    # ---- access ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.entries)

    def image_ids(self) -> list[int]:
        return [int(e.image["id"]) for e in self.entries]

    def load(self, index: int) -> Sample:
        """Read sample ``index``; raises :class:`DatasetError` for an unreadable file."""
        e = self.entries[index]
        im = e.image
        path = self.image_dir / im["file_name"]
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DatasetError(f"{path}: cannot read image (image {im['id']} of {self.ann_file})")
        h, w = bgr.shape[:2]
        masks = np.zeros((self.layout.num_masks, h, w), np.uint8)
        for i, (name, mpath) in enumerate(zip(self.layout.masks, self._mask_paths(im))):
            if mpath is None:
                continue
            m = cv2.imread(str(mpath), cv2.IMREAD_GRAYSCALE)
            if m is None:
                raise DatasetError(f"{mpath}: cannot read '{name}' mask (image {im['id']})")
            if m.shape != (h, w):
                raise DatasetError(f"{mpath}: '{name}' mask is {m.shape[1]}x{m.shape[0]}, image is {w}x{h}")
            masks[i] = m > 127
        kp = e.keypoints
        if self._convert:
            kp = convert_keypoints(kp, self.source_layout, self.layout)
        meta = {"ann_ids": list(e.ann_ids)}
        if "posesynth" in im:
            meta.update(im["posesynth"])
        return Sample(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), kp.copy(), masks, int(im["id"]),
                      im["file_name"], meta)

    def __getitem__(self, index: int) -> Sample:
        """Like :meth:`load`; under ``on_error="skip"`` a sample that fails to read is
        counted and replaced by the next readable one, so an epoch never dies on one file."""
        if self.on_error == "raise":
            return self.load(index)
        n = len(self.entries)
        for step in range(n):
            i = (index + step) % n
            if i in self._failed_at_runtime:
                continue
            try:
                return self.load(i)
            except DatasetError as err:
                self._failed_at_runtime.add(i)
                self.errors.append(str(err))
                log.warning("skipping: %s", err)
        raise DatasetError(f"{self.ann_file}: no readable sample left ({len(self.errors)} skipped)")

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]


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
    else from the labelled keypoints with 10% padding.
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
            for name, m in zip(self.layout.masks, sample.masks):
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
        for p, kp in enumerate(sample.keypoints):
            bbox = [round(float(v), 2) for v in boxes[p]] if boxes is not None else _bbox(kp, w, h)
            flat = [round(float(v), 3) if i % 3 < 2 else int(v) for i, v in enumerate(kp.reshape(-1))]
            ann = {"id": len(self.annotations) + 1, "image_id": image_id, "category_id": 1,
                   "keypoints": flat, "num_keypoints": int((kp[:, 2] > 0).sum()), "bbox": bbox,
                   "area": round(bbox[2] * bbox[3], 2), "iscrowd": 0}
            if sample.meta.get("provenance"):
                ann["provenance"] = sample.meta["provenance"]
            self.annotations.append(ann)
        return image_id

    def to_dict(self) -> dict[str, Any]:
        return {"info": self.info, "licenses": [], "categories": [self.category()],
                "images": self.images, "annotations": self.annotations}

    def close(self) -> Path:
        """Write the annotation file atomically (may be called repeatedly to checkpoint)."""
        path = self.root / self.ann_name
        atomic_write_json(path, self.to_dict())
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
