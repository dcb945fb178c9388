"""`otseg prepare ade20k`: `ADEChallengeData2016.zip` -> the layout `build_ade20k` reads (cross-dataset target).

Input in --src: `ADEChallengeData2016.zip` (or its `ADEChallengeData2016/` folder). The release is already in
the form the presets read (annotations hold 0 = other, 1..150 the classes, as mmsegmentation expects), so the
files are copied unchanged (hard links for a folder input) to
DATA_ROOT/ADEChallengeData2016/{images,annotations}/{training,validation}/, with objectInfo150.txt and
sceneCategories.txt. Official counts: 20,210 training and 2,000 validation images.
"""

from __future__ import annotations

from otseg.errors import BadFileError
from otseg.prepare.common import (
    PrepareOptions,
    copy_job,
    existing_names,
    find_input,
    plural,
    remove_stale_temporaries,
    run_jobs,
    safe_stem,
    verify_checksum,
)

__all__ = ["prepare_ade20k"]

WHAT = "otseg prepare ade20k"
_FOLDERS = ("images/training", "images/validation", "annotations/training", "annotations/validation")
_SUFFIX = {"images": ".jpg", "annotations": ".png"}


def prepare_ade20k(opts: PrepareOptions) -> dict[str, int]:
    """Copy the release into `opts.data_root`; returns the counts per folder."""
    inp = find_input(
        opts.src, ("ADEChallengeData2016.zip",), "ADEChallengeData2016/", "images/training", what=WHAT, entry="ade20k"
    )
    if opts.verify_checksums:
        note = verify_checksum(inp, opts.data_root, opts.progress)
        if note:
            print(note)
    out = opts.data_root / "ADEChallengeData2016"
    done = {}
    for folder in _FOLDERS:
        remove_stale_temporaries(out / folder)
        done[folder] = existing_names(out / folder)
    root_done = existing_names(out)

    def jobs():
        for m in inp.members((*(f"{f}/" for f in _FOLDERS), "objectInfo150.txt", "sceneCategories.txt")):
            folder, _, name = m.rel.rpartition("/")
            if folder == "":
                if name not in root_done:
                    yield copy_job(m, out / name)
                continue
            if folder not in done or not name.endswith(_SUFFIX[folder.split("/")[0]]) or name in done[folder]:
                continue
            safe_stem(name[:-4], f"{inp.describe()}: {m.rel}")
            yield copy_job(m, out / folder / name)

    run_jobs(jobs(), 0, "ADE20K files", opts.progress)
    counts = {f: len(existing_names(out / f)) for f in _FOLDERS}
    if not any(counts.values()):
        # An archive without ADEChallengeData2016/images/... (e.g. the release zip packed inside another zip) would
        # otherwise "succeed" with nothing written.
        raise BadFileError(
            f"{inp.describe()}: no image or annotation under ADEChallengeData2016/{{images,annotations}}/"
            "{training,validation}/; give --src the release ADEChallengeData2016.zip itself (or its unpacked folder), "
            "not an archive that contains it"
        )
    print(
        f"ade20k: wrote {out}: training {plural(counts['images/training'], 'image')} / "
        f"{plural(counts['annotations/training'], 'annotation')} (official: 20,210), validation "
        f"{plural(counts['images/validation'], 'image')} / {plural(counts['annotations/validation'], 'annotation')} "
        "(official: 2,000)"
    )
    return counts
