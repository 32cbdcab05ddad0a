"""Super-resolve your own images with any checkpoint: ``python src/upscale.py --weights X.pt INPUTS... -o OUT``.

The architecture and its options are read from the weights; the options they do not record
(``--window_size``, ``--res_scale``, ``--rgb_range`` ...) from the flags, else from the config.txt of
the run that saved them, else the published values; the first line says which came from where.
Inputs are image files or folders (``-r``: with their subfolders, mirrored under OUT): PNG, JPEG,
BMP, TIFF, gray, gray+alpha, RGB, RGBA, palette (written as RGB/RGBA), 8- or 16-bit (16-bit is
processed and written as 16-bit); an EXIF orientation is applied (the output is upright). The alpha
channel is upscaled bicubically. Large images are tiled (``--tile``; by default the largest tile
that fits half of the free memory). Each output is ``OUT/<name>_x<scale>.<ext>`` (``--suffix``
changes ``_x<scale>``); an existing file is kept unless ``--overwrite``; a file in an input folder
that is the output of another input there (OUT = that folder, a second run) is skipped. A network
that draws random numbers (NLSN) draws them after ``--seed``: the same output on every run.

Exit status: 0 all images written; 1 some images failed, to read or to write (each named on one
line, the others are still processed); 2 bad flags, missing weights or an unknown checkpoint.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

import api
from core import precision
from core.errors import UserError, run_entry_point
from core.io_utils import write_error_cause

EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff')
JPEG_QUALITY = 95
EXIF_ORIENTATION = 0x0112


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description='Super-resolve images with a checkpoint (architecture detected).',
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('inputs', nargs='+', help='image files and/or folders')
    p.add_argument('--weights', required=True, help='checkpoint (.pt state_dict)')
    p.add_argument('-o', '--output', required=True, help='output folder (created if needed)')
    p.add_argument('-r', '--recursive', action='store_true', help='descend into subfolders of input folders')
    p.add_argument('--scale', type=int, default=None, help='expected scale: refuse a checkpoint for another one')
    p.add_argument('--tile', type=int, default=None,
                   help='largest LR tile in pixels, context included (default: from the free memory)')
    p.add_argument('--tile_halo', type=int, default=None,
                   help='LR context around each tile (default: the receptive field for convolutional models, '
                        'which makes tiling exact; 16 for models with attention)')
    p.add_argument('--self_ensemble', action='store_true', help='average the 8 flips/transposes')
    p.add_argument('--precision', default='single', choices=precision.PRECISIONS, help='autocast precision')
    p.add_argument('--cpu', action='store_true', help='run on the CPU even if a GPU is available')
    p.add_argument('--suffix', default='_x{scale}', help='added to each output name; {scale} is replaced')
    p.add_argument('--overwrite', action='store_true', help='replace existing output files')
    p.add_argument('--seed', type=int, default=None,
                   help="seed of the random numbers a network draws (NLSN's hashing), drawn anew for every image "
                        '(default: the --seed of the run that saved the weights, from its config.txt; else '
                        f'{api.DEFAULT_SEED})')
    api.add_model_flags(p)
    return p


# -- finding the inputs

def collect(inputs: list[str], output: Path, recursive: bool) -> tuple[list[tuple[Path, Path]], list[str]]:
    """``(input file, output folder)`` pairs in a stable order, and one problem line per bad input path."""
    jobs, problems = [], []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            found = sorted(f for f in (path.rglob('*') if recursive else path.iterdir())
                           if f.is_file() and f.suffix.lower() in EXTENSIONS)
            if not found:
                problems.append(f'{path}: no {"/".join(e[1:] for e in EXTENSIONS)} images in it'
                                + ('' if recursive else ' (subfolders need -r)'))
            jobs += [(f, output / f.parent.relative_to(path)) for f in found]
        elif path.is_file():
            jobs.append((path, output))
        else:
            problems.append(f'{path}: no such file or folder')
    return jobs, problems


def outputs_of_other_inputs(jobs: list[tuple[Path, Path]], suffix: str) -> dict[Path, Path]:
    """Input file -> the input whose output it is (``-o`` is the input folder, run a second time): those are
    skipped, not upscaled again."""
    made = {}
    for src, folder in jobs:
        for ext in dict.fromkeys((src.suffix, '.png')):  # .png: a 16-bit JPEG/BMP is written as PNG
            made.setdefault((folder / f'{src.stem}{suffix}{ext}').resolve(), src)
    return {src: made[src.resolve()] for src, _ in jobs if made.get(src.resolve(), src) != src}


def check_suffix(suffix: str, scale: int) -> str:
    """``--suffix`` with ``{scale}`` replaced; UserError for other fields or a path separator."""
    try:
        text = suffix.format(scale=scale)
    except (KeyError, IndexError, ValueError, AttributeError):
        raise UserError(f'--suffix {suffix!r}: only {{scale}} is replaced (write {{{{ and }}}} for braces)') from None
    if any(c in text for c in '/\\\0'):
        raise UserError(f'--suffix {suffix!r}: part of a file name, without / or \\ (outputs go to -o)')
    return text


# -- reading and writing 8- and 16-bit images

def _png_bit_depth(path: Path) -> int | None:
    with open(path, 'rb') as f:
        head = f.read(26)
    if len(head) == 26 and head[:8] == b'\x89PNG\r\n\x1a\n' and head[12:16] == b'IHDR':
        return head[24]
    return None


def read_image(path: Path) -> np.ndarray:
    """uint8 or uint16, HW or HWC (C = 2 gray+alpha, 3 RGB, 4 RGBA); palette images become RGB(A)."""
    suffix = path.suffix.lower()
    orientation = 1
    if suffix in ('.tif', '.tiff'):
        import tifffile
        with tifffile.TiffFile(path) as tif:
            image = tif.asarray()
            tag = tif.pages[0].tags.get('Orientation')
            orientation = int(tag.value) if tag is not None else 1
        if image.ndim == 3 and image.shape[0] in (1, 2, 3, 4) and image.shape[2] > 4:  # planar (C, H, W)
            image = np.moveaxis(image, 0, -1)
    elif suffix == '.png' and _png_bit_depth(path) == 16:
        import png  # Pillow reads 16-bit colour PNGs as 8-bit
        width, height, rows, info = png.Reader(filename=str(path)).asDirect()
        planes = info['planes']
        image = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows]).reshape(height, width, planes)
    else:
        with Image.open(path) as img:
            img.load()
            orientation = img.getexif().get(EXIF_ORIENTATION, 1)
            if img.mode == 'P':
                img = img.convert('RGBA' if 'transparency' in img.info else 'RGB')
            elif img.mode in ('I;16', 'I;16B', 'I;16L', 'I'):
                img = np.asarray(img)
                if img.min() < 0 or img.max() > 65535:
                    raise ValueError(f'{img.dtype} values outside 0..65535')
                return upright(img.astype(np.uint16), orientation)
            elif img.mode not in ('L', 'LA', 'RGB', 'RGBA'):
                img = img.convert('RGBA' if 'A' in img.mode else 'RGB')
            image = np.asarray(img)
    if image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f'{image.dtype} pixels (only 8- and 16-bit integer images are supported)')
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (2, 3, 4)):
        raise ValueError(f'unsupported layout {image.shape}')
    return upright(image, orientation)


def upright(image: np.ndarray, orientation: int) -> np.ndarray:
    """``image`` (H, W[, C]) as it is meant to be seen, for the EXIF/TIFF orientation tag (1-8; 1: as stored)."""
    if orientation in (5, 6, 7, 8):  # stored lying on its side: first transposed, then flipped as 4, 3, 2, 1
        image = image.swapaxes(0, 1)
        orientation = {5: 1, 6: 2, 7: 3, 8: 4}[orientation]
    if orientation in (2, 3):
        image = image[:, ::-1]
    if orientation in (3, 4):
        image = image[::-1]
    return np.ascontiguousarray(image)


def _write_png16(path: Path, image: np.ndarray) -> None:
    import png
    planes = 1 if image.ndim == 2 else image.shape[2]
    writer = png.Writer(width=image.shape[1], height=image.shape[0], bitdepth=16,
                        greyscale=planes in (1, 2), alpha=planes in (2, 4))
    with open(path, 'wb') as f:
        writer.write(f, image.reshape(image.shape[0], -1))


def write_image(path: Path, image: np.ndarray) -> None:
    """Write atomically (a temporary file renamed into place), in the format of ``path``'s extension."""
    tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
    suffix = path.suffix.lower()
    try:
        if suffix in ('.tif', '.tiff'):
            import tifffile
            tifffile.imwrite(tmp, image, photometric='minisblack' if image.ndim == 2 or image.shape[2] == 2
                             else 'rgb')
        elif image.dtype == np.uint16:
            _write_png16(tmp, image)
        else:
            fmt = {'.png': 'PNG', '.jpg': 'JPEG', '.jpeg': 'JPEG', '.bmp': 'BMP'}[suffix]
            Image.fromarray(image).save(tmp, format=fmt, **({'quality': JPEG_QUALITY} if fmt == 'JPEG' else {}))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def output_path(src: Path, folder: Path, suffix: str, dtype: np.dtype) -> Path:
    """Where the output of ``src`` goes: ``folder/<stem><suffix>.<ext>`` (16-bit data as PNG unless TIFF)."""
    ext = src.suffix
    if dtype == np.uint16 and ext.lower() not in ('.png', '.tif', '.tiff'):
        ext = '.png'  # 16-bit data stays 16-bit
    return folder / f'{src.stem}{suffix}{ext}'


def _cause(e: BaseException) -> str:
    """A failed write in a few words: 'no space left on device', 'read-only file system', ..."""
    if isinstance(e, OSError) and e.strerror:
        return write_error_cause(e) or e.strerror.lower()
    return f'{type(e).__name__}: {e}'


# -- the program

class Batch:
    """The images of one command line, one by one: read, upscale, write; one line per image that fails."""

    def __init__(self, args: argparse.Namespace, net: torch.nn.Module, device: str) -> None:
        self.args, self.net, self.device = args, net, device
        self.seed = args.seed if args.seed is not None else net.sr_seed
        self.suffix = check_suffix(args.suffix, net.sr_args.scale[0])
        self.tile, self.halo = api.fit_tiling(net, args.tile, args.tile_halo)
        self.failed, self.written, self.seconds, self.targets = 0, 0, 0.0, set()

    def fail(self, src: Path, why: str) -> None:
        tqdm.write(f'error: {src}: {why}', file=sys.stderr)
        self.failed += 1

    def target(self, src: Path, folder: Path, image: np.ndarray) -> Path | None:
        """The output file of ``src``, or None (said why) when it must not be written."""
        dst = output_path(src, folder, self.suffix, image.dtype)
        if dst in self.targets or dst.resolve() == src.resolve():
            return self.fail(src, f'its output {dst} would overwrite another input or output')
        self.targets.add(dst)
        if dst.exists() and not self.args.overwrite:
            return self.fail(src, f'{dst} exists (--overwrite replaces it)')
        return dst

    def process(self, src: Path, folder: Path) -> None:
        try:
            image = read_image(src)
        except Exception as e:  # Pillow/tifffile/pypng raise many types for bad files
            return self.fail(src, f'cannot read it as an image ({type(e).__name__}: {e})')
        dst = self.target(src, folder, image)
        if dst is None:
            return
        start = time.perf_counter()
        try:
            sr = api.upscale(self.net, image, tile=self.tile, halo=self.halo, self_ensemble=self.args.self_ensemble,
                             precision=self.args.precision, seed=self.seed,
                             progress=lambda tiles: tqdm(tiles, unit='tile', leave=False, disable=None))
        except torch.OutOfMemoryError:
            return self.fail(src, f'out of memory on {self.device} ({image.shape[1]}x{image.shape[0]}); '
                                  'a smaller --tile uses less')
        if self.device == 'cuda':
            torch.cuda.synchronize()
        took = time.perf_counter() - start
        try:
            folder.mkdir(parents=True, exist_ok=True)
            write_image(dst, sr)
        except Exception as e:  # a full disk, a read-only folder, a file where a folder should be, ...
            return self.fail(src, f'cannot write {dst}: {_cause(e)}')
        self.seconds += took
        self.written += 1
        tqdm.write(f'{src} ({image.shape[1]}x{image.shape[0]}) -> {dst} ({sr.shape[1]}x{sr.shape[0]}) in {took:.2f} s')


def run(argv=None) -> int:
    args = build_parser().parse_args(argv)
    device = 'cpu' if args.cpu or not torch.cuda.is_available() else 'cuda'
    if args.tile is not None and args.tile < 8:
        raise UserError(f'--tile {args.tile}: must be at least 8')
    if args.tile_halo is not None and args.tile_halo < 0:
        raise UserError(f'--tile_halo {args.tile_halo}: must be >= 0')
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise UserError(f'-o {output}: a file, not a folder')
    check_suffix(args.suffix, args.scale or 2)  # before the weights are read; Batch applies the checkpoint's scale
    precision.check(args.precision, torch.device(device))
    overrides = api.model_overrides(args) | ({} if args.scale is None else {'scale': args.scale})
    net = api.load_pretrained(Path(args.weights), device=device, **overrides)
    print(f'{net.sr_options.removesuffix(".")}; on {device}.')
    batch = Batch(args, net, device)

    jobs, problems = collect(args.inputs, output, args.recursive)
    for line in problems:
        print(f'error: {line}', file=sys.stderr)
    skipped = outputs_of_other_inputs(jobs, batch.suffix)
    if skipped:
        example = next(iter(skipped.items()))
        print(f'Skipped {len(skipped)} file(s) that are the outputs of other inputs (e.g. {example[0]}, of '
              f'{example[1]}).')
    bar = tqdm([job for job in jobs if job[0] not in skipped], unit='image', disable=None)
    for src, folder in bar:
        bar.set_postfix_str(src.name)
        batch.process(src, folder)
    bar.close()
    if batch.written:
        print(f'{batch.written} image(s) in {batch.seconds:.2f} s: {batch.seconds / batch.written:.2f} s per image.')
    failed = len(problems) + batch.failed
    if failed:
        print(f'{failed} input(s) failed (see above).', file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    return run_entry_point(lambda: run(argv))


if __name__ == '__main__':
    sys.exit(main())
