"""One job per video over worker processes, with a progress bar: what `check.py` and `extract_flow.py` run."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

from tqdm import tqdm

Result = TypeVar("Result")


def over_videos(job: Callable[[str], Result], paths: Sequence[str], *, workers: int, desc: str, unit: str,
                progress: bool = True, postfix: Callable[[list[Result]], dict[str, Any]] | None = None,
                ) -> list[Result]:
    """``[job(path) for path in paths]``, in ``workers`` processes when more than one (a picklable ``job``).

    Processes, not threads: FFmpeg's log capture is per process, and a decoder crash stays in its worker.
    ``postfix(results so far)`` is shown beside the bar. Outputs: the results in the order of ``paths``.
    """
    bar = tqdm(total=len(paths), desc=desc, unit=unit, disable=not progress)
    results: list[Result] = []

    def record(result: Result) -> None:
        results.append(result)
        bar.update()
        if postfix is not None:
            bar.set_postfix(**postfix(results))

    try:
        if workers > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for future in [pool.submit(job, p) for p in paths]:
                    record(future.result())
        else:
            for p in paths:
                record(job(p))
    finally:
        bar.close()
    return results
