"""Keypoint datasets: layouts, formats, pose maps, transforms and synthetic driver scenes."""
from .coco import CocoKeypointDataset, CocoWriter, write_coco
from .convert import convert_keypoints
from .formats import BlazePoseVideoDataset, MpiiDataset, open_dataset
from .multi import MultiSource
from .layouts import COCO17, DRIVER9, KeypointLayout, get_layout
from .posemaps import PoseMapSpec, render_heatmaps, render_pafs, render_pose_maps
from .sample import Sample
from .synthetic import render_scene, scene_rng

__all__ = ["CocoKeypointDataset", "CocoWriter", "write_coco", "convert_keypoints", "BlazePoseVideoDataset",
           "MpiiDataset", "MultiSource", "open_dataset", "COCO17", "DRIVER9", "KeypointLayout", "get_layout", "PoseMapSpec",
           "render_heatmaps", "render_pafs", "render_pose_maps", "Sample", "render_scene", "scene_rng"]
