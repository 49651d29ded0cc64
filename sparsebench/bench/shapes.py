"""GEMM shape sets: named CSV files shipped in sparsebench/shapes/ (name,M,K,N), CSV paths, or
inline MxKxN."""
import csv
import dataclasses
import os
import re

#: the named shape sets, installed with the package
SHAPES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "shapes")


@dataclasses.dataclass(frozen=True)
class Shape:
    """Y (M x N) = W (M x K) @ X (K x N)."""

    name: str
    M: int
    K: int
    N: int

    @property
    def flops(self):
        """Dense-equivalent floating-point operations (2 M K N)."""
        return 2 * self.M * self.K * self.N

    def __str__(self):
        return f"{self.M}x{self.K}x{self.N}"


class ShapeFileError(ValueError):
    """A shape file or inline shape that cannot be read; says which file and line."""


_INLINE = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*x\s*(\d+)\s*$", re.I)


def load_shapes(spec):
    """Shapes from a comma-separated mix of set names (sparsebench/shapes/NAME.csv), CSV paths and MxKxN."""
    shapes = []
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            continue
        m = _INLINE.match(part)
        if m:
            M, K, N = (int(g) for g in m.groups())
            shapes.append(_checked(Shape(part, M, K, N), part, 0))
        else:
            shapes.extend(read_shape_file(_resolve(part)))
    if not shapes:
        raise ShapeFileError(f"no shapes in {spec!r}")
    return shapes


def _resolve(name):
    if os.path.exists(name):
        return name
    filename = name if name.endswith(".csv") else name + ".csv"
    for folder in ("shapes", SHAPES_DIR):
        path = os.path.join(folder, filename)
        if os.path.exists(path):
            return path
    known = sorted(f[:-4] for f in os.listdir(SHAPES_DIR) if f.endswith(".csv")) \
        if os.path.isdir(SHAPES_DIR) else []
    raise ShapeFileError(f"no shape file or set named {name!r}; give a CSV path, an inline MxKxN, "
                         f"or one of: {', '.join(known)}")


def read_shape_file(path):
    """Rows name,M,K,N; lines starting with # are comments. Errors name the file and line."""
    shapes = []
    with open(path, newline="") as f:
        rows = [(i, line) for i, line in enumerate(f, 1) if line.strip() and not line.lstrip().startswith("#")]
    if not rows:
        raise ShapeFileError(f"{path}: no shapes (expected a header 'name,M,K,N' and rows)")
    header = [h.strip() for h in next(csv.reader([rows[0][1]]))]
    if header != ["name", "M", "K", "N"]:
        raise ShapeFileError(f"{path}:{rows[0][0]}: header must be 'name,M,K,N', got {','.join(header)!r}")
    for lineno, line in rows[1:]:
        cells = [c.strip() for c in next(csv.reader([line]))]
        if len(cells) != 4:
            raise ShapeFileError(f"{path}:{lineno}: expected 4 fields name,M,K,N, got {len(cells)}")
        try:
            M, K, N = (int(c) for c in cells[1:])
        except ValueError:
            raise ShapeFileError(f"{path}:{lineno}: M, K, N must be integers, got {cells[1:]}") from None
        shapes.append(_checked(Shape(cells[0], M, K, N), path, lineno))
    if not shapes:
        raise ShapeFileError(f"{path}: header but no shapes")
    return shapes


def _checked(shape, where, lineno):
    if min(shape.M, shape.K, shape.N) < 1:
        raise ShapeFileError(f"{where}:{lineno}: M, K, N must be positive, got {shape}")
    if shape.M * shape.K > 2**31 or shape.K * shape.N > 2**31:
        raise ShapeFileError(f"{where}:{lineno}: shape {shape} is too large")
    return shape
