"""Media helpers the decode and dataset-check tests share."""

from pathlib import Path

import av


def remux_faststart(src: Path, dst: Path) -> None:
    """Copy the video packets of `src` into an mp4 whose header comes first, so a truncated copy still opens."""
    with av.open(str(src)) as source, av.open(str(dst), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is not None:  # the demuxer's final flush packet
                packet.stream = stream
                out.mux(packet)
