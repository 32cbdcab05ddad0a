"""Super-resolve your own images with any checkpoint: ``python src/upscale.py --weights X.pt INPUTS... -o OUT``.

The architecture and its options are read from the weights. Inputs are image files or folders
(``-r``: with their subfolders, mirrored under OUT): PNG, JPEG, BMP, TIFF, gray, gray+alpha, RGB,
RGBA, palette (written as RGB/RGBA), 8- or 16-bit (16-bit is processed and written as 16-bit).
The alpha channel is upscaled bicubically. Large images are tiled (``--tile``; by default the
largest tile that fits half of the free memory). Each output is ``OUT/<name>_x<scale>.<ext>``
(``--suffix`` changes ``_x<scale>``); an existing file is kept unless ``--overwrite``.

Exit status: 0 all images written; 1 some images failed (each named on one line, the others are
still processed); 2 bad flags, missing weights or an unknown checkpoint.
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
from core.errors import UserError, run_entry_point

EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff')
JPEG_QUALITY = 95


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
    p.add_argument('--precision', default='single', choices=tuple(api.PRECISIONS), help='autocast precision')
    p.add_argument('--cpu', action='store_true', help='run on the CPU even if a GPU is available')
    p.add_argument('--suffix', default='_x{scale}', help='added to each output name; {scale} is replaced')
    p.add_argument('--overwrite', action='store_true', help='replace existing output files')
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
    if suffix in ('.tif', '.tiff'):
        import tifffile
        image = tifffile.imread(path)
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
            if img.mode == 'P':
                img = img.convert('RGBA' if 'transparency' in img.info else 'RGB')
            elif img.mode in ('I;16', 'I;16B', 'I;16L', 'I'):
                img = np.asarray(img)
                if img.min() < 0 or img.max() > 65535:
                    raise ValueError(f'{img.dtype} values outside 0..65535')
                return img.astype(np.uint16)
            elif img.mode not in ('L', 'LA', 'RGB', 'RGBA'):
                img = img.convert('RGBA' if 'A' in img.mode else 'RGB')
            image = np.asarray(img)
    if image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f'{image.dtype} pixels (only 8- and 16-bit integer images are supported)')
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (2, 3, 4)):
        raise ValueError(f'unsupported layout {image.shape}')
    return image


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


def output_path(src: Path, folder: Path, suffix: str, scale: int, dtype: np.dtype) -> Path:
    ext = src.suffix
    if dtype == np.uint16 and ext.lower() not in ('.png', '.tif', '.tiff'):
        ext = '.png'  # 16-bit data stays 16-bit
    return folder / f'{src.stem}{suffix.format(scale=scale)}{ext}'


# -- the program

def run(argv=None) -> int:
    args = build_parser().parse_args(argv)
    device = 'cpu' if args.cpu or not torch.cuda.is_available() else 'cuda'
    if args.tile is not None and args.tile < 8:
        raise UserError(f'--tile {args.tile}: must be at least 8')
    if args.tile_halo is not None and args.tile_halo < 0:
        raise UserError(f'--tile_halo {args.tile_halo}: must be >= 0')
    weights = Path(args.weights)
    overrides = {} if args.scale is None else {'scale': args.scale}
    net = api.load_pretrained(weights, device=device, **overrides)
    scale = net.sr_args.scale[0]
    print(f'{weights}: {net.sr_detected.describe()}; on {device}.')

    output = Path(args.output)
    jobs, problems = collect(args.inputs, output, args.recursive)
    for line in problems:
        print(f'error: {line}', file=sys.stderr)
    failed, written, seconds, targets = len(problems), 0, 0.0, set()
    bar = tqdm(jobs, unit='image', disable=None)
    for src, folder in bar:
        bar.set_postfix_str(src.name)
        try:
            image = read_image(src)
        except Exception as e:  # Pillow/tifffile/pypng raise many types for bad files
            tqdm.write(f'error: {src}: cannot read it as an image ({type(e).__name__}: {e})', file=sys.stderr)
            failed += 1
            continue
        dst = output_path(src, folder, args.suffix, scale, image.dtype)
        if dst in targets or dst.resolve() == src.resolve():
            tqdm.write(f'error: {src}: its output {dst} would overwrite another input or output', file=sys.stderr)
            failed += 1
            continue
        targets.add(dst)
        if dst.exists() and not args.overwrite:
            tqdm.write(f'error: {src}: {dst} exists (--overwrite replaces it)', file=sys.stderr)
            failed += 1
            continue
        start = time.perf_counter()
        sr = api.upscale(net, image, tile=args.tile, halo=args.tile_halo, self_ensemble=args.self_ensemble,
                         precision=args.precision,
                         progress=lambda tiles: tqdm(tiles, unit='tile', leave=False, disable=None))
        if device == 'cuda':
            torch.cuda.synchronize()
        took = time.perf_counter() - start
        folder.mkdir(parents=True, exist_ok=True)
        write_image(dst, sr)
        seconds += took
        written += 1
        tqdm.write(f'{src} ({image.shape[1]}x{image.shape[0]}) -> {dst} ({sr.shape[1]}x{sr.shape[0]}) in {took:.2f} s')
    bar.close()
    if written:
        print(f'{written} image(s) in {seconds:.2f} s: {seconds / written:.2f} s per image.')
    if failed:
        print(f'{failed} input(s) failed (see above).', file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    return run_entry_point(lambda: run(argv))


if __name__ == '__main__':
    sys.exit(main())
