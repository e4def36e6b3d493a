"""Decode colonoscopy videos into a studies folder, one PNG per kept frame, with groups and flags.

Per video: open and decode with PyAV (FFmpeg), keep every N-th frame or one
frame per 1/fps seconds, measure each kept frame (``frames.measure``), write it
as ``<video>_<frame>.png`` into a staging folder ``.polypal/ingest-tmp/``,
check the stream was complete, record the frames and their groups in
``.polypal/video.sqlite``, and only then rename each frame into the studies
folder (same file system, so each frame appears whole or not at all). A video
that fails anywhere leaves nothing behind but its error message.

PNG, not JPEG: the decoded frame has already been through the video codec's
lossy compression; a second lossy generation would change what the model
trains on and what the annotator sees for no gain but disk space
(compress_level 1 keeps the writing fast).
"""

from __future__ import annotations

import errno
import filecmp
import hashlib
import json
import math
import os
import re
import shutil
import sqlite3
import sys
import time

import av
from PIL import Image
from tqdm import tqdm

from polypal.data import images
from polypal.video import frames as F
from polypal.vocab import FRAME_EXTENSIONS
from polypal.serving.fileops import fsync_dir
from polypal.serving.sqlite_db import DamagedDatabase
from polypal.video.store import VideoDB, db_path

VIDEO_EXTS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ts", ".wmv")
FRAME_DIGITS = 6
MAX_ID = 128
STAGING = os.path.join(".polypal", "ingest-tmp")
MAX_FPS = 1000.0  # --fps above any recorder's rate keeps every frame anyway
# a video some of whose packets the decoder refuses is ingested without their pictures (a damaged spot in a
# long recording); more than this share of its frames lost is a broken stream, refused
LOST_FRACTION = 0.02


class VideoError(Exception):
    """A video that cannot be ingested; the message names the file. ``left``: frames of it left in the
    studies folder (a move that failed midway: the next run moves the rest)."""

    left = 0


def sanitize(stem: str, digits: int = FRAME_DIGITS) -> str:
    """A video file's stem as an id prefix: letters, digits, '_', '-', '.' (no '..', no leading '.'),
    short enough that '<prefix>_<frame>' fits framestore.check_name's 128 characters."""
    s = re.sub(r"[^A-Za-z0-9_.\-]", "_", stem)
    s = re.sub(r"_{2,}", "_", re.sub(r"\.{2,}", "_", s)).strip("._")
    s = s[: MAX_ID - 1 - digits - 3].rstrip(".")  # room for '-NN' when names collide
    return s or "video"


def fingerprint(path: str) -> str:
    """Size plus SHA-256 of the first and last MiB (of the whole file up to 2 MiB): the same file gives the
    same value, cheaply. (Before, a file of 1-2 MiB was hashed on its first MiB only, so another video of
    the same size and start was skipped as "already ingested".)"""
    size = os.path.getsize(path)
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if size > 1 << 20:
            f.seek(max(1 << 20, size - (1 << 20)))
            h.update(f.read(1 << 20))
    return h.hexdigest()[:32]


def legacy_fingerprint(path: str) -> str | None:
    """The value versions before 2026-12-07 gave a file of 1-2 MiB (its first MiB only), so that a video
    they ingested is still known as ingested (None for other sizes: their value did not change)."""
    size = os.path.getsize(path)
    if not (1 << 20) < size <= (2 << 20):
        return None
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
    return h.hexdigest()[:32]


STAGING_LOCK = ".lock"  # in each staging folder: flock'd by its ingest while it runs
_OLD_STAGING_S = 3600  # a staging folder without a lock file (an older version's) goes only when this old


def _clean_staging(studies: str) -> None:
    """Remove staging folders of ingest processes that no longer run: no such process here, and the lock file
    in the folder not held (an ingest holds it while it runs: one in another container or on another machine
    sharing the studies folder has a pid that means nothing here, and its folder was removed under it; a lock
    on a plain file, which NFS passes to its server). A folder without the file (made by an older version, or
    a crash right after its creation) goes when its pid is gone and it is an hour old. (A killed ingest's name
    reservation stays: the same file ingested again takes it back; another video of that name gets
    ``<name>-2``.)"""
    import fcntl

    root = os.path.join(studies, STAGING)
    for d in os.listdir(root) if os.path.isdir(root) else []:
        pid = d.split("-", 1)[0]
        try:
            os.kill(int(pid), 0)
            continue
        except (ValueError, ProcessLookupError):
            pass
        except PermissionError:
            continue
        path = os.path.join(root, d)
        try:
            fd = os.open(os.path.join(path, STAGING_LOCK), os.O_RDWR)
        except FileNotFoundError:
            try:
                if time.time() - os.lstat(path).st_mtime > _OLD_STAGING_S:
                    shutil.rmtree(path, ignore_errors=True)
            except OSError:
                pass
            continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: its ingest runs elsewhere
            continue
        finally:
            os.close(fd)
        shutil.rmtree(path, ignore_errors=True)


VIDEO_LOCKS = os.path.join(".polypal", "ingest-locks")  # one lock file per video (its fingerprint), kept


def _hold_video(studies: str, fp: str, path: str) -> int:
    """An flock on this video's lock file, held while it is ingested: a second ingest of the same file waits
    for the first (and then adds nothing, or only what its own settings add). Before, two at once with
    different settings shared one name, and the second dropped the records of the first's frames not yet
    moved in, which then came in with no group or flag. The files stay (never unlinked, so a waiter never
    locks a file that is no longer there): one empty file per video, with the umask's mode as every file
    of the folder; one another account made is opened read-only (enough for flock on a local disk). The
    wait is said even with --quiet: it has no time limit (a lock held by a host that died stays held
    on some NFS set-ups until its server frees it)."""
    import fcntl

    d = os.path.join(studies, VIDEO_LOCKS)
    os.makedirs(d, exist_ok=True)
    lock = os.path.join(d, fp + ".lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"note: {path}: another ingest of this same video is running; waiting for it to end", file=sys.stderr,
              flush=True)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
    except BaseException:
        os.close(fd)
        raise
    return fd


def _hold(folder: str) -> int:
    """The staging folder's lock file, flock'd for as long as the returned descriptor stays open."""
    import fcntl

    fd = os.open(os.path.join(folder, STAGING_LOCK), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


# Demuxers FFmpeg may use: video files only. A playlist (HLS .m3u8, ffconcat) names other files, which
# FFmpeg would open and decode: an .m3u8 handed to polypal-ingest put another local video's frames (another
# patient's) into the studies folder. Only local files, no other protocol.
OPEN_OPTIONS = {"format_whitelist": "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,mpegts,mpeg,asf",
                "protocol_whitelist": "file"}
ACCEPTED = "mp4, mov, mkv, webm, avi, MPEG-TS/PS, WMV"


PLAYLIST_EXTS = {".m3u8": "an HLS playlist", ".m3u": "an M3U playlist", ".ffconcat": "an ffconcat list",
                 ".ffcat": "an ffconcat list"}


def _playlist(path: str) -> str | None:
    """What kind of playlist the file is ("an HLS playlist", ...), by its first bytes (#EXTM3U, "ffconcat
    version") whatever its name, else by its extension; None for anything else."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096).removeprefix(b"\xef\xbb\xbf").lstrip()
    except OSError:
        return None  # (said when its fingerprint is read)
    if head.startswith(b"#EXTM3U"):
        return "an HLS playlist" if b"#EXT-X-" in head else "an M3U playlist"
    if head.startswith(b"ffconcat version"):
        return "an ffconcat list"
    return PLAYLIST_EXTS.get(os.path.splitext(path)[1].lower())


def _reason(e: Exception) -> str:
    """FFmpeg's words without its error code and the path again ("[Errno 1094995529] Invalid data found
    when processing input: 'x.mp4'" -> "Invalid data found when processing input")."""
    if isinstance(e, av.FFmpegError) and getattr(e, "strerror", None):
        return str(e.strerror)
    return re.sub(r"^\[Errno -?\d+\] ", "", str(e))


def _decode(path: str, stage: str, name: str, every: int | None, fps: float | None, quiet: bool) -> tuple:
    """Decode ``path``, writing kept frames into ``stage``. Returns (rows, decoded, stream fps)."""
    try:
        container = av.open(path, options=OPEN_OPTIONS)
    except (av.FFmpegError, OSError, ValueError) as e:
        why = _reason(e)
        raise VideoError(f"{path}: not a readable video in an accepted container ({ACCEPTED}): "
                         f"{'its format is none of these' if why == 'Invalid argument' else why}") from None
    with container:
        if not container.streams.video:
            raise VideoError(f"{path}: no video stream in the file")
        stream = container.streams.video[0]
        cap = images.MAX_PIXELS
        w, h = stream.codec_context.width or 0, stream.codec_context.height or 0
        if w * h > cap:
            raise VideoError(f"{path}: frames of {w} x {h} pixels are over the cap of {cap} pixels (the server "
                             f"refuses such frames too; POLYPAL_MAX_PIXELS here and --conf max_pixels there raise it)")
        rate = float(stream.average_rate or stream.guessed_rate or 0) or None
        declared = stream.frames or 0  # a count the container states (mp4, avi), else none
        duration = container.duration / av.time_base if container.duration else None
        estimate = declared or (int(duration * rate) if duration and rate else 0)  # (for the progress bar)
        rows, n, next_t = [], 0, 0.0
        prev_t = t0 = None
        gap = 1.0 / rate if rate else 0.0  # the longest a frame was shown (a variable rate's slow part)
        tb = stream.time_base
        packets = 0  # the video's packets from its first keyframe on, less those its container says to drop
        lead = True  # before the first keyframe: packets of a clip cut mid-GOP, which no decoder can show
        vend = None  # the end of the video's last packet or frame, in its own time (seconds)
        fend = None  # the end of the last packet of any stream, in the file's time (seconds)
        bar = tqdm(total=estimate or None, unit="frame", desc=name[:30], disable=quiet, leave=False)
        damaged, errors = False, _DecodeErrors()  # FFmpeg hides damage (it paints over it) and only logs it
        err_pts = None  # the latest packet (its time) whose decoding logged an error
        stored = 0  # every video packet in the file (an mp4 edit list's hidden ones and those before a key too)
        lost, lost_at, lost_why = 0, None, None  # packets the decoder refused (their pictures lost): how many,
        # where the first was, and why
        try:
            with errors:
                for packet in container.demux():  # every stream: the file ends with its last one
                    at = packet.pts if packet.pts is not None else packet.dts
                    end = None
                    if at is not None and packet.time_base:
                        end = float((at + (packet.duration or 0)) * packet.time_base)
                        fend = end if fend is None else max(fend, end)
                    if packet.stream.index != stream.index:
                        continue
                    if packet.size:  # (not the empty packet that flushes the decoder at the end)
                        stored += 1
                        lead = lead and not packet.is_keyframe
                        if not lead and not packet.is_discard:  # (an mp4 edit list's hidden samples: not shown)
                            packets += 1
                        if end is not None:
                            vend = end if vend is None else max(vend, end)
                    seen = errors.count()
                    try:
                        decoded = packet.decode()
                    except av.FFmpegError as e:
                        if lead and n == 0:  # (a cut before a keyframe: the video starts at the next one)
                            continue
                        # a packet the decoder refuses: its picture is lost, those predicted from it are
                        # damaged (below); the decoder goes on with the next packet (the whole video was refused)
                        lost += 1
                        if lost_at is None:
                            lost_at = f"{float(packet.pts * tb) - (t0 or 0.0):.2f} s" \
                                if packet.pts is not None and tb else f"after frame {n}"
                        lost_why = lost_why or _reason(e)
                        if packet.pts is not None:
                            err_pts = packet.pts if err_pts is None else max(err_pts, packet.pts)
                        damaged = True
                        continue
                    new_errors = errors.count() > seen
                    if new_errors and packet.pts is not None:
                        err_pts = packet.pts if err_pts is None else max(err_pts, packet.pts)
                    for frame in decoded:
                        # a decoding error damages the packet's picture and every one predicted from it: the
                        # frames until a keyframe shown after it (a damaged keyframe is itself damaged; the
                        # errors of a clip cut before its first keyframe end there too)
                        clean_key = frame.key_frame and (err_pts is None or frame.pts is None or frame.pts > err_pts)
                        damaged = new_errors or (damaged and not clean_key)
                        raw = float(frame.time) if frame.time is not None else (n / rate if rate else float(n))
                        if frame.time is not None:
                            ve = raw + 1.0 / (rate or 25.0)
                            vend = ve if vend is None else max(vend, ve)
                        if t0 is None:
                            t0 = raw
                        t = raw - t0  # times from the first frame (a .ts starts at 0.08 s, a cut clip anywhere)
                        if prev_t is not None and t < prev_t - 0.1:  # the times start again (streams joined, a
                            next_t = t  # recorder's reset): keep frames at the rate from here on (before, every
                        elif prev_t is not None:  # frame after a reset was dropped in silence)
                            gap = max(gap, t - prev_t)
                        prev_t = t
                        if fps:
                            keep = t + 1e-6 >= next_t
                            if keep:  # the first multiple of 1/fps after t (one step, whatever the gap)
                                next_t = (math.floor((t + 1e-6) * fps) + 1) / fps
                        else:
                            keep = n % (every or 1) == 0
                        if frame.width * frame.height > cap:  # a stream may change size midway
                            raise VideoError(f"{path}: frame {n} is {frame.width} x {frame.height} pixels, over the cap "
                                             f"of {cap} pixels")
                        if keep:
                            rgb = frame.to_ndarray(format="rgb24")
                            fid = f"{name}_{n:0{FRAME_DIGITS}d}"
                            try:
                                Image.fromarray(rgb).save(os.path.join(stage, fid + ".png"), compress_level=1)
                            except OSError as e:  # disk full, permissions: not the video's fault
                                raise VideoError(f"{path}: cannot write its frames under {stage}: {e}") from None
                            rows.append({"id": fid, "frame": n, "time_s": round(t, 4), **F.measure(rgb),
                                         **({"damaged": True} if damaged else {})})
                        n += 1
                        bar.update(1)
        except (av.FFmpegError, OSError, ValueError) as e:
            raise VideoError(f"{path}: damaged or truncated video after {n} frames ({_reason(e)})") from None
        finally:
            bar.close()
        # the video stream's own end: from its header's length (mp4, avi, ts: counted from its first time),
        # or an mkv's DURATION tag (its end time); not the file's, which covers every stream (audio may go on
        # after the video). An mkv's duration is its end time too (a clip cut from 0.52 s to 10 s "lasts 10 s")
        vstart = float(stream.start_time * tb) if stream.start_time is not None and tb else 0.0
        vdur, vfrom = (float(stream.duration * tb), vstart) if stream.duration and tb else \
            (_tag_seconds(stream.metadata), 0.0)
        fstart = container.start_time / av.time_base if container.start_time is not None else 0.0
        if "matroska" in (container.format.name or ""):
            fstart = 0.0
    if n == 0:
        raise VideoError(f"{path}: no frame could be decoded (empty or damaged video"
                         f"{f': {lost_why}' if lost_why else ''})")
    if lost > LOST_FRACTION * (n + lost) + 1:  # (more than a damaged spot: a wrong or broken stream)
        raise VideoError(f"{path}: damaged: {lost} of its {n + lost} video frames could not be decoded (the first "
                         f"at {lost_at}: {lost_why})")
    # A cut file ends before its header says. Compared: the video's packets with the frames decoded (not
    # the count an mp4 states, which counts the samples an edit list hides), the end of the video's last
    # packet with the video's own end, and the end of the file's last packet (any stream) with the file's end
    # (not the first decoded frame's time: a clip cut mid-GOP starts later; before, such files were refused)
    slack = max(gap, 1.0 / rate if rate else 0.0)
    if declared and stored < 0.98 * declared - 1:  # (an avi cut short: FFmpeg reads its length from the index
        # it finds, so the checks below pass; its header still says how many frames it had)
        raise VideoError(f"{path}: truncated or damaged: the file declares {declared} frames, it holds "
                         f"{stored}")
    if packets and n + lost < 0.98 * packets - 1:
        raise VideoError(f"{path}: truncated or damaged: the file holds {packets} video frames, "
                         f"only {n} could be decoded")
    if vdur and vend is not None:
        if vend - vfrom < 0.98 * vdur - slack:
            raise VideoError(f"{path}: truncated or damaged: its video lasts {vdur:.1f} s, the file holds only "
                             f"{max(vend - vfrom, 0):.1f} s of it")
    if duration and fend is not None and fend - fstart < 0.98 * duration - slack:  # (every stream cut short)
        raise VideoError(f"{path}: truncated or damaged: the file lasts {duration:.1f} s, its streams end after "
                         f"{max(fend - fstart, 0):.1f} s")
    return rows, n, rate, {"lost": lost, "at": lost_at, "why": lost_why} if lost else None


class _DecodeErrors:
    """FFmpeg's error messages while a video is decoded (it conceals damaged pictures and only logs it; PyAV
    raises nothing): ``count()`` grows with each one."""

    def __init__(self):
        self._logs = self._capture = self._level = self._repeats = None

    def __enter__(self):
        import av.logging

        self._level, self._repeats = av.logging.get_level(), av.logging.get_skip_repeated()
        av.logging.set_level(av.logging.ERROR)
        av.logging.set_skip_repeated(False)  # (one message per damaged frame, even the same text each time)
        self._capture = av.logging.Capture(local=False)  # (frame threads log from FFmpeg's own threads)
        self._logs = self._capture.__enter__()
        return self

    def __exit__(self, *exc):
        import av.logging

        try:
            self._capture.__exit__(*exc)
        finally:
            av.logging.set_level(self._level)
            av.logging.set_skip_repeated(self._repeats)
        return False

    def count(self) -> int:
        return len(self._logs) if self._logs is not None else 0


def _tag_seconds(meta) -> float | None:
    """An mkv track's DURATION tag ("00:00:04.000000000") in seconds; None when absent or unreadable."""
    m = re.fullmatch(r"\s*(\d+):(\d\d):(\d\d(?:\.\d*)?)\s*", (meta or {}).get("DURATION", "") or "")
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3)) if m else None


def _move_no_replace(src: str, dst: str) -> None:
    """Rename ``src`` to ``dst`` unless ``dst`` exists (FileExistsError): a hard link then an unlink, atomic;
    on a file system without hard links (exFAT, some network shares), a check then a rename."""
    try:
        os.link(src, dst)
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if os.path.lexists(dst):
            raise FileExistsError(dst) from None
        os.replace(src, dst)
        return
    os.unlink(src)


def _taken(studies: str, fid: str, staged: str, on_disk: dict[str, list[str]]) -> bool:
    """A file of this frame id is in the studies folder and is not this frame (written by an earlier run):
    e.g. a client uploaded that id first (frame ids are predictable). Never replaced, never taken over.
    ``on_disk``: the folder's file names by lower-cased name, so that "x.Png" counts as frame x as the
    datastore counts it."""
    for ext in {e.lower() for e in FRAME_EXTENSIONS}:
        for n in on_disk.get((fid + ext).lower(), ()):
            p = os.path.join(studies, n)
            if not (n == fid + ".png" and os.path.isfile(p) and filecmp.cmp(staged, p, shallow=False)):
                return True
    return False


def _names_by_lower(studies: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    try:
        for n in os.listdir(studies):
            out.setdefault(n.lower(), []).append(n)
    except FileNotFoundError:
        pass
    return out


def _untaken(db, studies: str, stage: str, name: str, fp: str, rows: list[dict]) -> tuple[str, list[dict]]:
    """(name, rows) with no frame id taken by another file: the video is renamed ``<name>-k`` if needed."""
    on_disk = _names_by_lower(studies)

    def clash(nm: str) -> bool:
        return any(_taken(studies, f"{nm}_{r['frame']:0{FRAME_DIGITS}d}", os.path.join(stage, r["id"] + ".png"),
                          on_disk) for r in rows)

    new, k = name, 1
    while clash(new):
        if new != name:
            db.release(new, fp)  # each name tried and found taken goes back (the first one, below)
        k += 1
        new = db.name_for(f"{name}-{k}", fp)
    if new == name:
        return name, rows
    db.release(name, fp)
    out = []
    for r in rows:
        fid = f"{new}_{r['frame']:0{FRAME_DIGITS}d}"
        os.rename(os.path.join(stage, r["id"] + ".png"), os.path.join(stage, fid + ".png"))
        out.append({**r, "id": fid})
    print(f"note: frame ids of {name} are taken by other files in {studies}: ingested as {new}", file=sys.stderr)
    return new, out


def ingest_video(path: str, studies: str, every: int | None = None, fps: float | None = None,
                 max_bits: int = F.DUP_BITS, quiet: bool = False) -> dict:
    """Ingest one video into ``studies``; raises VideoError (naming the file) and leaves nothing behind."""
    path, studies = str(path), str(studies)
    if os.path.isdir(path):
        raise VideoError(f"{path}: a folder, not a video file (name the video files in it)")
    if not os.path.isfile(path):
        raise VideoError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise VideoError(f"{path}: empty file (zero frames)")
    kind = _playlist(path)
    if kind:
        raise VideoError(f"{path}: {kind}, which names other files: polyp-al does not open playlists (it would "
                         f"read the files they name); ingest the video files themselves")
    settings = json.dumps({"every": every, "fps": fps}, sort_keys=True)
    db = VideoDB(studies)
    try:
        fp, legacy = fingerprint(path), legacy_fingerprint(path)
    except OSError as e:
        raise VideoError(f"{path}: cannot read it ({e})") from None
    if legacy:  # recorded by an older version under its value: now under this one (else it was ingested again)
        db.rename_fingerprint(legacy, fp)
    try:
        vlock = _hold_video(studies, fp, path)
    except OSError as e:
        raise VideoError(f"{path}: cannot lock it in {os.path.join(studies, VIDEO_LOCKS)} ({e})") from None
    try:
        return _ingest_held(path, studies, every, fps, max_bits, quiet, db, fp, settings)
    finally:
        os.close(vlock)


def _ingest_held(path: str, studies: str, every, fps, max_bits: int, quiet: bool, db, fp: str,
                 settings: str) -> dict:
    """ingest_video's work, with the video's lock held."""
    done = db.find(fp, settings)
    if done:
        return {"video": done["name"], "source": path, "decoded": done["decoded"], "kept": done["kept"],
                "written": 0, "note": "already ingested with these settings: nothing added"}
    name = db.name_for(sanitize(os.path.splitext(os.path.basename(path))[0]), fp, settings)
    stage = os.path.join(studies, STAGING, f"{os.getpid()}-{name}")
    held = None
    try:
        os.makedirs(stage, exist_ok=True)
        held = _hold(stage)
        rows, decoded, rate, lost = _decode(path, stage, name, every, fps, quiet)
        kept = len(rows)
        # frames an earlier run moved in whose files are gone were deleted since (through the server, into
        # its trash: e.g. a frame that shows a patient's name): never written again
        placed = db.placed(r["id"] for r in rows)
        deleted = {i for i in placed if not os.path.lexists(os.path.join(studies, i + ".png"))}
        if deleted:
            for i in deleted:
                os.unlink(os.path.join(stage, i + ".png"))
            rows = [r for r in rows if r["id"] not in deleted]
        name, rows = _untaken(db, studies, stage, name, fp, rows)
        video = {"name": name, "source": os.path.abspath(path), "size": os.path.getsize(path), "fingerprint": fp,
                 "settings": settings, "fps": rate, "decoded": decoded, "kept": kept,
                 "ingested_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        before = db.recorded(r["id"] for r in rows)  # (what a failed move takes out again: the rest)
        try:
            res = db.add(video, rows, max_bits)  # groups recorded before the frames appear
        except ValueError as e:
            raise VideoError(f"{path}: {e}") from None
        written, moved, mine = 0, [], []  # (mine: moved by this run)
        try:
            for r in rows:
                src, dst = os.path.join(stage, r["id"] + ".png"), os.path.join(studies, r["id"] + ".png")
                if os.path.exists(dst) and filecmp.cmp(src, dst, shallow=False):  # an earlier run wrote it
                    moved.append(r["id"])
                    continue
                try:
                    _move_no_replace(src, dst)  # never over a file: one that appeared since _untaken stays
                except FileExistsError:
                    # the frames this run moved are taken out again and their new records dropped: the next
                    # run ingests the video under another name, whole (before, the frames moved stayed, and
                    # the next run wrote them all again under <name>-2: each of them twice)
                    out = _take_out(studies, mine)
                    moved = [i for i in moved if i not in set(mine)]
                    db.forget(name, [x["id"] for x in rows if x["id"] not in before], max_bits)
                    left = f"; {len(mine) - out} of them could not be taken out" if out < len(mine) else ""
                    err = VideoError(f"{path}: frame id {r['id']} was taken by another file while ingesting; the "
                                     f"{out} frames moved in before were taken out again{left}; run again to "
                                     f"ingest it under another name")
                    err.left = len(mine) - out
                    raise err from None
                except OSError as e:
                    err = VideoError(f"{path}: cannot move frame {r['id']} into {studies}: {e}; "
                                     f"{written} frames moved, run again to finish")
                    err.left = written
                    raise err from None
                moved.append(r["id"])
                mine.append(r["id"])
                written += 1
        except BaseException:
            if moved:  # those in place count as placed: one deleted before the next run stays deleted
                try:
                    _sync(studies, [os.path.join(studies, i + ".png") for i in moved])
                    db.mark_placed(moved)
                except Exception:  # noqa: BLE001 - the move's own error is the one to report
                    pass
            raise
        _sync(studies, [os.path.join(studies, r["id"] + ".png") for r in rows])  # on disk before it is done:
        # only now does a re-run with these settings skip this video (a power cut before had left empty frames)
        db.finish(name, fp, settings, decoded, kept, [r["id"] for r in rows])
    except BaseException:
        try:
            db.release(name, fp)  # a name it recorded nothing under goes back (no frame row: no file either)
        except Exception:  # noqa: BLE001 - the video's own error is the one to report
            pass
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if held is not None:
            os.close(held)
        try:
            os.rmdir(os.path.dirname(stage))  # only when no other ingest is staging
        except OSError:
            pass
    out = {"video": name, "source": path, "decoded": decoded, "kept": kept, "written": written, **res}
    bad = sum(1 for r in rows if r.get("damaged"))
    if bad:  # (flagged "damaged": never served first)
        out["damaged"] = bad
    if lost:  # (their pictures are not among the frames; those predicted from them are flagged "damaged")
        out["undecodable"] = lost["lost"]
        out["undecodable_note"] = (f"{lost['lost']} video frame(s) could not be decoded and are missing (the "
                                   f"first at {lost['at']}: {lost['why']})")
    if deleted:
        out["not_restored"] = len(deleted)
        out["note"] = (f"{len(deleted)} frame(s) deleted since an earlier ingest (through the server, into its "
                       f"trash) not written again")
    return out


def _take_out(studies: str, ids: list[str]) -> int:
    """Remove the frames of these ids that this run moved into ``studies``; how many went."""
    n = 0
    for i in ids:
        try:
            os.unlink(os.path.join(studies, i + ".png"))
            n += 1
        except FileNotFoundError:  # (deleted meanwhile: gone all the same)
            n += 1
        except OSError:
            pass
    try:
        fsync_dir(studies)
    except OSError:
        pass
    return n


def _sync(folder: str, paths: list[str]) -> None:
    """The frames' contents and their names in ``folder`` on disk (one fsync each, after all are written:
    the kernel has flushed most by then)."""
    for p in paths:
        try:
            fd = os.open(p, os.O_RDONLY)
        except FileNotFoundError:  # deleted since (a server client): nothing to keep
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fsync_dir(folder)


def _has_ingested_frames(studies: str) -> bool:
    from polypal.video.store import FRAME_ID

    try:
        return any(n.endswith(".png") and FRAME_ID.match(n[:-4]) for n in os.listdir(studies))
    except OSError:
        return False


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="polypal-ingest", description="Decode colonoscopy videos into a studies "
                                 "folder (one PNG per kept frame), group near-duplicates, flag useless frames.")
    ap.add_argument("videos", nargs="+", metavar="VIDEO", help="mp4/avi/mkv/... files")
    ap.add_argument("--studies", required=True, help="studies folder (created if missing; may be served)")
    rate = ap.add_mutually_exclusive_group()
    rate.add_argument("--fps", type=float, help="keep about this many frames per second of video")
    rate.add_argument("--every", type=int, help="keep every N-th decoded frame (default: every frame)")
    ap.add_argument("--dup-bits", type=int, default=F.DUP_BITS,
                    help=f"dHash Hamming distance (of {F.HASH * F.HASH} bits) for near-duplicates "
                         f"(default {F.DUP_BITS})")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    a = ap.parse_args(argv)
    if a.fps is not None and not 0 < a.fps <= MAX_FPS:  # (nan fails this too; inf hung, 1e9 as good as)
        ap.error(f"--fps must be a number of frames per second above 0 and at most {MAX_FPS}, got {a.fps}")
    if a.every is not None and a.every < 1:
        ap.error(f"--every must be >= 1, got {a.every}")
    if not 0 <= a.dup_bits <= F.HASH * F.HASH:
        ap.error(f"--dup-bits must be 0 to {F.HASH * F.HASH} (bits of the {F.HASH}x{F.HASH} dHash), got {a.dup_bits}")
    if os.path.exists(a.studies) and not os.path.isdir(a.studies):
        print(f"polypal-ingest: --studies {a.studies} is a file, not a folder", file=sys.stderr)
        return 2
    records = db_path(a.studies)
    if os.path.isfile(records) and os.path.getsize(records) == 0 and _has_ingested_frames(a.studies):
        print(f"polypal-ingest: {records} is empty while {a.studies} holds ingested frames: their records (groups, "
              f"flags, which video they came from) are gone, and ingesting again would add a second copy of "
              f"each video under another name; put it back from a backup first", file=sys.stderr)
        return 2
    try:
        os.makedirs(a.studies, exist_ok=True)
        VideoDB(a.studies)  # its records readable before any video is decoded
    except DamagedDatabase as e:  # its message names the file and says what to do
        print(f"polypal-ingest: {e}", file=sys.stderr)
        return 2
    except sqlite3.DatabaseError as e:
        if isinstance(e, sqlite3.OperationalError):  # locked, read-only: not damage, no backup needed
            print(f"polypal-ingest: cannot use {a.studies}: {e}", file=sys.stderr)
        else:
            print(f"polypal-ingest: {records}: cannot be used ({e}); put it back from a backup (with its -wal "
                  f"file beside it), or move it aside to start its records afresh", file=sys.stderr)
        return 2
    except (OSError, sqlite3.Error) as e:
        print(f"polypal-ingest: cannot use {a.studies}: {e}", file=sys.stderr)
        return 2
    _clean_staging(a.studies)
    failed = left = 0
    for v in tqdm(a.videos, unit="video", disable=a.quiet or len(a.videos) < 2):
        try:
            r = ingest_video(v, a.studies, a.every, a.fps, a.dup_bits, a.quiet)
        except VideoError as e:
            failed += 1
            left += e.left
            print(f"error: {e}", file=sys.stderr, flush=True)
            continue
        except (OSError, sqlite3.Error) as e:  # the studies folder (not the video) failed: say which video
            failed += 1
            print(f"error: {v}: {e}", file=sys.stderr, flush=True)
            continue
        print(json.dumps(r), flush=True)
    unlisted = False
    if os.path.exists(os.path.join(a.studies, ".polypal", "datastore.sqlite")):
        from polypal.serving.framestore import FrameStore, LinkedFolder  # a served folder: its datastore lists
        # the new frames now

        try:
            FrameStore(a.studies)  # opening reconciles
        except LinkedFolder as e:  # the frames are in; the server will not start until the link is gone
            print(f"polypal-ingest: the frames are in {a.studies}, but its datastore cannot list them: {e}",
                  file=sys.stderr, flush=True)
            unlisted = True
        except DamagedDatabase as e:  # (its message names the file and says what to do; was a traceback)
            print(f"polypal-ingest: the frames are in {a.studies}, but its datastore cannot list them: {e}",
                  file=sys.stderr, flush=True)
            unlisted = True
        except (sqlite3.Error, OSError) as e:
            print(f"polypal-ingest: the frames are in {a.studies}, but its datastore "
                  f"{os.path.join(a.studies, '.polypal', 'datastore.sqlite')} cannot list them: {e}",
                  file=sys.stderr, flush=True)
            unlisted = True
    if failed:
        print(f"{failed} of {len(a.videos)} video(s) failed; " + (f"{left} frame(s) of them are in, the rest not "
              f"(see above)" if left else "nothing was written for them"), file=sys.stderr)
    return 1 if failed or unlisted else 0


if __name__ == "__main__":
    raise SystemExit(main())
