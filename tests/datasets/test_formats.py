"""Each dataset layout loader on a tiny layout built here (empty files stand in for videos)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vidssl.datasets.formats import (
    DAVIS_PALETTE,
    DatasetLayoutError,
    MissingFilesError,
    VideoEntry,
    csv_manifest,
    davis,
    folder,
    hmdb51,
    kinetics,
    read_mask,
    synthetic,
    ucf101,
    vggsound,
    write_mask,
)


def touch(root: Path, *paths: str) -> None:
    for p in paths:
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        (root / p).write_bytes(b"")


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# --------------------------------------------------------------------------------------------------
# folder


def test_folder_labels_are_sorted_class_names(tmp_path: Path) -> None:
    touch(tmp_path, "zebra/b.mp4", "zebra/a.AVI", "apple/x.mkv", "apple/notes.txt", "mango/y.webm")
    entries = folder(tmp_path)
    assert entries == [
        VideoEntry("apple/x.mkv", 0, "train"),
        VideoEntry("mango/y.webm", 1, "train"),
        VideoEntry("zebra/a.AVI", 2, "train"),
        VideoEntry("zebra/b.mp4", 2, "train"),
    ]
    assert [e.path for e in folder(tmp_path, extensions=[".mp4"])] == ["zebra/b.mp4"]


def test_folder_split_folders_share_one_label_map(tmp_path: Path) -> None:
    # "cat" has no val video: val labels must still index the classes of every split
    touch(tmp_path, "train/cat/1.mp4", "train/dog/2.mp4", "val/dog/3.mp4")
    assert folder(tmp_path, split="train") == [
        VideoEntry("train/cat/1.mp4", 0, "train"),
        VideoEntry("train/dog/2.mp4", 1, "train"),
    ]
    assert folder(tmp_path, split="val") == [VideoEntry("val/dog/3.mp4", 1, "val")]
    with pytest.raises(FileNotFoundError, match="test"):
        folder(tmp_path, split="test")


def test_folder_frame_dirs_and_empty_layout(tmp_path: Path) -> None:
    touch(tmp_path, "run/clip1/00001.jpg", "run/clip2/00001.jpg", "walk/clip3/00001.jpg")
    entries = folder(tmp_path, frame_dirs=True)
    assert [(e.path, e.label) for e in entries] == [("run/clip1", 0), ("run/clip2", 0), ("walk/clip3", 1)]
    with pytest.raises(FileNotFoundError, match="no files"):
        folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        folder(tmp_path / "absent")


# --------------------------------------------------------------------------------------------------
# CSV manifest


def test_csv_manifest_int_labels_splits_and_trimming(tmp_path: Path) -> None:
    touch(tmp_path, "v/a.mp4", "v/b.mp4", "v/c.mp4")
    write(tmp_path / "m.csv", "path,label,split,start,end\nv/a.mp4,3,train,,\nv/b.mp4,,val,1.5,4\nv/c.mp4,0,,0,2\n")
    assert csv_manifest(tmp_path, manifest="m.csv") == [
        VideoEntry("v/a.mp4", 3, "train"),
        VideoEntry("v/b.mp4", -1, "val", 1.5, 4.0),
        VideoEntry("v/c.mp4", 0, "train", 0.0, 2.0),
    ]
    assert [e.path for e in csv_manifest(tmp_path, manifest=tmp_path / "m.csv", split="val")] == ["v/b.mp4"]


def test_csv_manifest_named_labels_map_to_sorted_indices(tmp_path: Path) -> None:
    touch(tmp_path, "a.mp4", "b.mp4", "c.mp4", "d.mp4")
    write(tmp_path / "m.csv", "path,label\na.mp4,walk\nb.mp4,run\nc.mp4,walk\nd.mp4,1\n")
    # one non-integer label makes the whole column names: "1" < "run" < "walk"
    assert [e.label for e in csv_manifest(tmp_path, manifest="m.csv")] == [2, 1, 2, 0]
    write(tmp_path / "p.csv", "path\na.mp4\n")
    assert csv_manifest(tmp_path, manifest="p.csv") == [VideoEntry("a.mp4")]


def test_csv_manifest_missing_files_fail_with_count_and_paths(tmp_path: Path) -> None:
    touch(tmp_path, "ok.mp4")
    rows = "".join(f"gone{i}.mp4\n" for i in range(8))
    write(tmp_path / "m.csv", "path\nok.mp4\n" + rows)
    with pytest.raises(MissingFilesError) as info:
        csv_manifest(tmp_path, manifest="m.csv")
    message = str(info.value)
    assert "8 of 9" in message and "gone0.mp4" in message and "gone4.mp4" in message and "3 more" in message
    assert "gone7.mp4" not in message
    assert info.value.missing == [f"gone{i}.mp4" for i in range(8)]
    assert isinstance(info.value, FileNotFoundError)


@pytest.mark.parametrize(
    "text, match",
    [
        ("file,label\na.mp4,1\n", "header"),
        ("path,label,colour\na.mp4,1,red\n", "unknown columns"),
        ("path,label\na.mp4,1,extra\n", r"m.csv:2: 3 fields"),
        ("path,start,end\na.mp4,5,2\n", r"m.csv:2: end 2.0 is not after start 5.0"),
        ("path,start\na.mp4,soon\n", "'start' is not a number"),
        ("", "empty manifest"),
    ],
)
def test_csv_manifest_bad_rows_name_file_and_line(tmp_path: Path, text: str, match: str) -> None:
    touch(tmp_path, "a.mp4")
    write(tmp_path / "m.csv", text)
    with pytest.raises(DatasetLayoutError, match=match):
        csv_manifest(tmp_path, manifest="m.csv")


# --------------------------------------------------------------------------------------------------
# UCF101 and HMDB51


def make_ucf(root: Path) -> None:
    lists = root / "ucfTrainTestlist"
    write(lists / "classInd.txt", "1 ApplyEyeMakeup\n2 HandstandPushups\n3 YoYo\n")
    write(lists / "trainlist01.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\nYoYo/v_YoYo_g09_c01.avi 3\n")
    # the official list spells this class's files "HandStand" but its folder "Handstand"
    write(lists / "testlist01.txt", "HandstandPushups/v_HandStandPushups_g01_c01.avi\nYoYo/v_YoYo_g01_c02.avi\n")
    touch(root / "UCF-101", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "YoYo/v_YoYo_g09_c01.avi",
          "HandstandPushups/v_HandStandPushups_g01_c01.avi", "YoYo/v_YoYo_g01_c02.avi")


def test_ucf101_official_lists(tmp_path: Path) -> None:
    make_ucf(tmp_path)
    assert ucf101(tmp_path) == [
        VideoEntry("UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", 0, "train"),
        VideoEntry("UCF-101/YoYo/v_YoYo_g09_c01.avi", 2, "train"),
    ]
    val = [VideoEntry("UCF-101/HandstandPushups/v_HandStandPushups_g01_c01.avi", 1, "val"),
           VideoEntry("UCF-101/YoYo/v_YoYo_g01_c02.avi", 2, "val")]
    assert ucf101(tmp_path, split="val") == val
    assert ucf101(tmp_path, split="test") == val
    assert len(ucf101(tmp_path, split=None)) == 4
    with pytest.raises(FileNotFoundError, match="trainlist02"):
        ucf101(tmp_path, fold=2)
    with pytest.raises(ValueError, match="fold"):
        ucf101(tmp_path, fold=4)


def test_ucf101_missing_video_and_unknown_class(tmp_path: Path) -> None:
    make_ucf(tmp_path)
    (tmp_path / "UCF-101/YoYo/v_YoYo_g01_c02.avi").unlink()
    with pytest.raises(MissingFilesError, match="1 of 2.*v_YoYo_g01_c02"):
        ucf101(tmp_path, split="val")
    write(tmp_path / "ucfTrainTestlist/trainlist01.txt", "Juggling/v_Juggling_g01_c01.avi 4\n")
    with pytest.raises(DatasetLayoutError, match=r"trainlist01.txt:1"):
        ucf101(tmp_path)


def test_hmdb51_official_split_ids(tmp_path: Path) -> None:
    lists = tmp_path / "testTrainMulti_7030_splits"
    write(lists / "brush_hair_test_split1.txt", "a.avi 1\nb.avi 2\nc.avi 0\n")
    write(lists / "wave_test_split1.txt", "d.avi 2 \ne.avi 1\n")
    write(lists / "wave_test_split2.txt", "d.avi 1\n")
    touch(tmp_path / "videos", "brush_hair/a.avi", "brush_hair/b.avi", "wave/d.avi", "wave/e.avi")  # c is unused
    assert hmdb51(tmp_path) == [VideoEntry("videos/brush_hair/a.avi", 0, "train"),
                                VideoEntry("videos/wave/e.avi", 1, "train")]
    assert hmdb51(tmp_path, split="test") == [VideoEntry("videos/brush_hair/b.avi", 0, "val"),
                                              VideoEntry("videos/wave/d.avi", 1, "val")]
    assert len(hmdb51(tmp_path, split=None)) == 4
    assert hmdb51(tmp_path, fold=2) == [VideoEntry("videos/wave/d.avi", 0, "train")]
    write(lists / "wave_test_split1.txt", "d.avi 3\n")
    with pytest.raises(DatasetLayoutError, match="wave_test_split1.txt:1"):
        hmdb51(tmp_path)
    with pytest.raises(FileNotFoundError, match="_test_split3"):
        hmdb51(tmp_path, fold=3)


# --------------------------------------------------------------------------------------------------
# Kinetics and VGG-Sound


def test_kinetics_nested_and_flat_videos(tmp_path: Path) -> None:
    header = "label,youtube_id,time_start,time_end,split,is_cc\n"
    write(tmp_path / "annotations/train.csv", header + "abseiling,abc,14,24,train,0\nair drumming,-x_y,0,10,train,0\n")
    write(tmp_path / "annotations/val.csv", header + "zumba,qqq,5,15,val,0\n")
    touch(tmp_path, "train/abseiling/abc_000014_000024.mp4", "train/air_drumming/-x_y_000000_000010.mp4",
          "val/qqq_000005_000015.mkv")
    assert kinetics(tmp_path) == [
        VideoEntry("train/abseiling/abc_000014_000024.mp4", 0, "train"),
        VideoEntry("train/air_drumming/-x_y_000000_000010.mp4", 1, "train"),
    ]
    assert kinetics(tmp_path, split="val") == [VideoEntry("val/qqq_000005_000015.mkv", 2, "val")]
    assert len(kinetics(tmp_path, split=None)) == 3


def test_kinetics_missing_videos_fail_or_skip(tmp_path: Path) -> None:
    write(tmp_path / "k400_train.csv",
          "label,youtube_id,time_start,time_end,split\nrun,aaa,0,10,train\nrun,bbb,3,13,train\n")
    touch(tmp_path, "clips/train/aaa_000000_000010.mp4")
    options = dict(annotations="k400_{split}.csv", videos="clips/{split}")
    with pytest.raises(MissingFilesError, match="1 of 2.*bbb_000003_000013"):
        kinetics(tmp_path, **options)
    kept = kinetics(tmp_path, skip_missing=True, **options)
    assert kept == [VideoEntry("clips/train/aaa_000000_000010.mp4", 0, "train")]
    with pytest.raises(FileNotFoundError, match="k400_val.csv"):
        kinetics(tmp_path, split="val", **options)


def test_vggsound_file_naming_variants(tmp_path: Path) -> None:
    write(tmp_path / "vggsound.csv",
          '---g-f_I2yQ,1,"people marching, drum",test\n--0PQM4-hqg,30,waterfall burbling,train\nzz9,7,owl,train\n')
    touch(tmp_path / "video", "---g-f_I2yQ_000001.mp4", "sub/--0PQM4-hqg_30_40.mp4", "zz9_000007_000017.mp4")
    assert vggsound(tmp_path) == [VideoEntry("video/sub/--0PQM4-hqg_30_40.mp4", 2, "train"),
                                  VideoEntry("video/zz9_000007_000017.mp4", 0, "train")]
    assert vggsound(tmp_path, split="test") == [VideoEntry("video/---g-f_I2yQ_000001.mp4", 1, "val")]
    (tmp_path / "video/zz9_000007_000017.mp4").unlink()
    with pytest.raises(MissingFilesError, match="zz9_000007"):
        vggsound(tmp_path)
    assert len(vggsound(tmp_path, split=None, skip_missing=True)) == 2
    write(tmp_path / "vggsound.csv", "abc,1,owl,holdout\n")
    with pytest.raises(DatasetLayoutError, match="vggsound.csv:1"):
        vggsound(tmp_path)


def test_synthetic_reads_the_manifest(tmp_path: Path) -> None:
    touch(tmp_path, "videos/v000.mp4", "videos/v001.mp4")
    write(tmp_path / "manifest.csv", "path,label,split\nvideos/v000.mp4,0,train\nvideos/v001.mp4,1,val\n")
    assert synthetic(tmp_path, split="val") == [VideoEntry("videos/v001.mp4", 1, "val")]
    assert len(synthetic(tmp_path)) == 2


# --------------------------------------------------------------------------------------------------
# DAVIS


def test_palette_is_the_voc_colour_map() -> None:
    assert DAVIS_PALETTE.shape == (256, 3) and DAVIS_PALETTE.dtype == np.uint8
    expected = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 4: (0, 0, 128),
                5: (128, 0, 128), 8: (64, 0, 0), 15: (192, 128, 128), 255: (224, 224, 192)}
    for index, colour in expected.items():
        assert tuple(DAVIS_PALETTE[index]) == colour
    assert len({tuple(c) for c in DAVIS_PALETTE}) == 256


def test_mask_round_trip_through_palette_png(tmp_path: Path) -> None:
    mask = np.random.default_rng(0).integers(0, 6, (7, 11)).astype(np.uint8)
    write_mask(tmp_path / "deep/00000.png", mask)
    with Image.open(tmp_path / "deep/00000.png") as image:
        assert image.mode == "P"
        assert np.array_equal(np.array(image.convert("RGB")), DAVIS_PALETTE[mask])
    assert np.array_equal(read_mask(tmp_path / "deep/00000.png"), mask)
    Image.fromarray(DAVIS_PALETTE[mask]).save(tmp_path / "rgb.png")  # an RGB rendering maps back too
    assert np.array_equal(read_mask(tmp_path / "rgb.png"), mask)


def test_mask_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="H×W"):
        write_mask(tmp_path / "a.png", np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="0..255"):
        write_mask(tmp_path / "a.png", np.full((2, 2), 300))
    Image.fromarray(np.full((2, 2, 3), 7, np.uint8)).save(tmp_path / "odd.png")
    with pytest.raises(ValueError, match="odd.png.*outside the DAVIS palette"):
        read_mask(tmp_path / "odd.png")


def make_davis(root: Path, sequences: dict[str, int], split: str = "val") -> None:
    for name, frames in sequences.items():
        for i in range(frames):
            path = root / "JPEGImages/480p" / name / f"{i:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(path)
        write_mask(root / "Annotations/480p" / name / "00000.png", np.zeros((4, 6), np.uint8))
    write(root / "ImageSets/2017" / f"{split}.txt", "".join(f"{n}\n" for n in sequences))


def test_davis_sequences(tmp_path: Path) -> None:
    make_davis(tmp_path, {"bear": 3, "car": 2})
    make_davis(tmp_path, {"dog": 1}, split="train")
    sequences = davis(tmp_path)
    assert [s.name for s in sequences] == ["bear", "car"]
    assert [p.name for p in sequences[0].frames] == ["00000.jpg", "00001.jpg", "00002.jpg"]
    assert [p.name for p in sequences[0].annotations] == ["00000.png"]
    assert [s.name for s in davis(tmp_path, split=None)] == ["dog", "bear", "car"]
    with pytest.raises(FileNotFoundError, match="test-dev.txt"):
        davis(tmp_path, split="test-dev")


def test_davis_errors_name_the_sequence(tmp_path: Path) -> None:
    make_davis(tmp_path, {"bear": 2})
    (tmp_path / "Annotations/480p/bear/00000.png").rename(tmp_path / "Annotations/480p/bear/00001.png")
    with pytest.raises(FileNotFoundError, match="'bear' has no annotation of its first frame 00000.jpg"):
        davis(tmp_path)
    write(tmp_path / "ImageSets/2017/val.txt", "ghost\n")
    with pytest.raises(FileNotFoundError, match="'ghost' has no frames"):
        davis(tmp_path)
