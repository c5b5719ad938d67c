"""Import a TLT / TAO DetectNet_v2 experiment spec (protobuf text format) as a transferdet experiment.

``transferdet import-spec path/to/spec.txt`` reads the spec's eight blocks (``dataset_config``,
``augmentation_config``, ``model_config``, ``training_config``, ``evaluation_config``,
``bbox_rasterizer_config``, ``postprocessing_config``, ``cost_function_config``) and ``random_seed``,
and writes ``conf/experiment/<name>.yaml``: each block becomes our group of the same meaning, map
entries (``key: .. value ..``) become per-class maps, and every key that has no counterpart is listed,
with its line, at the top of the file and on the terminal. The result is checked by composing and
validating ``transferdet train experiment=<name>`` before it is written.

The parser reads protobuf text format without the ``.proto`` files (TLT's are not public in a usable
form): fields ``name: value`` and ``name { ... }``, repeated fields, ``#`` and ``//`` comments, and the
typographic quotes that specs copied from web pages often carry.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shutil
import tempfile
import typing
from dataclasses import dataclass, field
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from transferdet.config import schema as S
from transferdet.config.structured import config_error
from transferdet.config.validate import validate
from transferdet.errors import ConfigError, DataError
from transferdet.utils.io import atomic_path

# --------------------------------------------------------------------------- protobuf text format


@dataclass
class Field:
    name: str
    value: Any  # str | float | int | bool | list[Field] (a message)
    line: int


_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r\f\v]+) | (?P<nl>\n) | (?P<comment>(\#|//)[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*" | '(?:[^'\\\n]|\\.)*' | “[^”\n]*” | ‘[^’\n]*’ | ”[^”\n]*” )
  | (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?[fF]?(?![\w.]))
  | (?P<ident>[A-Za-z_][\w.]*)
  | (?P<punct>[{}:<>\[\],;])
""",
    re.VERBOSE,
)


def _tokens(text: str, path: Path) -> list[tuple[str, str, int]]:
    out, line, pos = [], 1, 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise DataError(path, f"unexpected character {text[pos]!r} in a protobuf text spec", line)
        kind = m.lastgroup
        if kind == "nl":
            line += 1
        elif kind not in ("ws", "comment"):
            out.append((kind, m.group(), line))
        pos = m.end()
    return out


# protobuf text format's escapes: \n \t ... \\ \' \", octal \NNN and hex \xNN bytes (a UTF-8 sequence
# written byte by byte stays one character)
_ESCAPE = re.compile(r"\\(?:([abfnrtv\\'\"?])|([0-7]{1,3})|x([0-9A-Fa-f]{1,2}))")
_SIMPLE = {
    "a": b"\a",
    "b": b"\b",
    "f": b"\f",
    "n": b"\n",
    "r": b"\r",
    "t": b"\t",
    "v": b"\v",
    "\\": b"\\",
    "'": b"'",
    '"': b'"',
    "?": b"?",
}


def unescape(body: str) -> str:
    """A quoted string's body with protobuf's escapes decoded; other characters (Windows paths' backslashes
    before other letters, UTF-8 text) are kept as they are."""
    out, pos = bytearray(), 0
    for m in _ESCAPE.finditer(body):
        out += body[pos : m.start()].encode("utf-8")
        simple, octal, hexa = m.groups()
        out += _SIMPLE[simple] if simple else bytes([int(octal, 8) & 0xFF] if octal else [int(hexa, 16)])
        pos = m.end()
    out += body[pos:].encode("utf-8")
    return out.decode("utf-8", errors="replace")


def _scalar(kind: str, text: str) -> Any:
    if kind == "string":
        return unescape(text[1:-1]) if text[0] in "\"'" else text[1:-1]
    if kind == "number":
        text = text.rstrip("fF")
        return float(text) if any(c in text for c in ".eE") else int(text)
    return {"true": True, "false": False, "True": True, "False": False}.get(text, text)


MAX_DEPTH = 32


def parse(text: str, path: Path) -> list[Field]:
    """The spec as a list of fields (a message); nested messages are lists of fields too."""
    tokens = _tokens(text, path)
    pos, depth = 0, [0]

    def error(msg: str) -> DataError:
        line = tokens[min(pos, len(tokens) - 1)][2] if tokens else 1
        return DataError(path, msg, line)

    def message(close: str | None, opened: tuple[str, int] = ("", 0)) -> list[Field]:
        nonlocal pos
        fields: list[Field] = []
        while True:
            if pos == len(tokens):
                if close:
                    raise DataError(
                        path, f"block '{opened[0]}' opened at line {opened[1]} has no closing '{close}'", tokens[-1][2]
                    )
                return fields
            kind, text, line = tokens[pos]
            if close and text == close:
                pos += 1
                return fields
            if kind != "ident":
                raise error(f"expected a field name, found {text!r}")
            pos += 1
            colon = pos < len(tokens) and tokens[pos][1] == ":"
            pos += colon
            if pos == len(tokens):
                raise error(f"field {text!r} has no value")
            kind2, text2, _ = tokens[pos]
            if text2 in ("{", "<"):
                if depth[0] >= MAX_DEPTH:
                    raise error(f"blocks nested more than {MAX_DEPTH} deep (a DetectNet_v2 spec nests 5)")
                pos += 1
                depth[0] += 1
                fields.append(Field(text, message("}" if text2 == "{" else ">", (text, line)), line))
                depth[0] -= 1
            elif text2 == "[":
                pos += 1
                while pos < len(tokens) and tokens[pos][1] != "]":
                    k, t, _ = tokens[pos]
                    if k not in ("string", "number", "ident"):
                        raise error(f"expected a value in the list of {text!r}, found {t!r}")
                    fields.append(Field(text, _scalar(k, t), line))
                    pos += 1
                    if pos < len(tokens) and tokens[pos][1] == ",":
                        pos += 1
                if pos == len(tokens):
                    raise DataError(
                        path, f"the list of '{text}' opened at line {line} has no closing ']'", tokens[-1][2]
                    )
                pos += 1
            elif colon and kind2 in ("string", "number", "ident"):
                fields.append(Field(text, _scalar(kind2, text2), line))
                pos += 1
            else:
                raise error(f"expected a value or '{{' after {text!r}, found {text2!r}")
            if pos < len(tokens) and tokens[pos][1] in (",", ";"):
                pos += 1

    return message(None)


# --------------------------------------------------------------------------- spec -> our groups

BLOCKS = {  # TLT block -> (our group, its schema)
    "dataset_config": ("dataset", S.DatasetConfig),
    "augmentation_config": ("augmentation", S.AugmentationConfig),
    "model_config": ("model", S.ModelConfig),
    "training_config": ("training", S.TrainingConfig),
    "evaluation_config": ("evaluation", S.EvaluationConfig),
    "bbox_rasterizer_config": ("rasterizer", S.RasterizerConfig),
    "postprocessing_config": ("postprocessing", S.PostprocessingConfig),
    "cost_function_config": ("cost", S.CostConfig),
}
TLT_MODEL_SUFFIXES = (".hdf5", ".h5", ".tlt", ".etlt")
# repeated messages keyed by their own `name` field (not key/value map entries)
NAMED_LISTS = {("cost", "target_classes"), ("cost", "objectives")}


@dataclass
class Imported:
    groups: dict[str, dict] = field(default_factory=dict)
    unmapped: list[str] = field(default_factory=list)  # "block.key (line N): why"
    notes: list[str] = field(default_factory=list)


def _hints(tp: type) -> dict[str, Any]:
    return typing.get_type_hints(tp, vars(S))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is typing.Union:  # Optional[X]
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if isinstance(tp, type) and issubclass(tp, Enum):
        names = {m.value.lower(): m.value for m in tp}
        if str(value).lower() not in names:
            raise ConfigError(where, value, ", ".join(m.value for m in tp))
        return names[str(value).lower()]
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is bool and isinstance(value, bool) or tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is str and isinstance(value, (str, int, float)):
        return str(value)
    raise ConfigError(
        where, value, f"a {getattr(tp, '__name__', tp)} (the spec's value does not fit transferdet's key)"
    )


def _message(fields: list[Field], tp: type, group: str, path: str, out: Imported) -> dict:
    """One spec message as a dict of the dataclass ``tp``'s keys; unknown keys go to ``out.unmapped``."""
    hints = _hints(tp)
    result: dict[str, Any] = {}
    for f in fields:
        where = f"{path}.{f.name}"
        if f.name not in hints:
            out.unmapped.append(f"{where} (line {f.line})")
            continue
        tp_f = hints[f.name]
        origin, args = typing.get_origin(tp_f), typing.get_args(tp_f)
        if origin in (dict, dict):
            item_tp = args[1]
            entries = result.setdefault(f.name, {})
            if not isinstance(f.value, list):
                raise DataError(where, f"expected a map entry {{ key: ... value: ... }} at line {f.line}")
            if (group, f.name) in NAMED_LISTS:
                name = next((x.value for x in f.value if x.name == "name"), None)
                body = [x for x in f.value if x.name != "name"]
            else:
                name = next((x.value for x in f.value if x.name == "key"), None)
                body = next((x.value for x in f.value if x.name == "value"), None)
            if name is None or body is None:
                raise DataError(where, f"map entry at line {f.line} needs a key (or name) and a value")
            key = str(name)
            if dataclasses.is_dataclass(item_tp):
                entries[key] = _message(body if isinstance(body, list) else [], item_tp, group, f"{where}.{key}", out)
            else:
                entries[key] = _coerce(body, item_tp, f"{where}.{key}")
        elif origin in (list, list):
            if isinstance(f.value, list):
                raise DataError(where, f"expected a value (repeated for a list) at line {f.line}, found a block")
            result.setdefault(f.name, []).append(_coerce(f.value, args[0], where))
        elif dataclasses.is_dataclass(tp_f):
            if not isinstance(f.value, list):
                raise DataError(where, f"expected a block {{ ... }} at line {f.line}")
            result[f.name] = _message(f.value, tp_f, group, where, out)
        else:
            if isinstance(f.value, list):
                raise DataError(where, f"expected a single value at line {f.line}, found a block")
            result[f.name] = _coerce(f.value, tp_f, where)
    return result


def _pop(fields: list[Field], name: str) -> list[Field]:
    taken = [f for f in fields if f.name == name]
    fields[:] = [f for f in fields if f.name != name]
    return taken


# the dataset-convert spec (tlt-dataset-convert -d): kitti_config field -> dataset key
KITTI_CONFIG = {
    "root_directory_path": "root",
    "image_dir_name": "image_dir_name",
    "label_dir_name": "label_dir_name",
    "image_extension": "image_extension",
    "partition_mode": "partition_mode",
    "num_partitions": "num_partitions",
    "val_split": "val_split",
    "num_shards": "num_shards",
    "kitti_sequence_to_frames_file": "kitti_sequence_to_frames_file",
}


def _convert_spec(f: Field, out: Imported) -> bool:
    """The top-level fields of a dataset-convert spec into the dataset group; False for any other field."""
    dataset = out.groups.setdefault("dataset", {}) if f.name in ("kitti_config", "image_directory_path") else None
    if f.name == "kitti_config" and isinstance(f.value, list):
        hints = _hints(S.DatasetConfig)
        for x in f.value:
            key = KITTI_CONFIG.get(x.name)
            if key is None:
                out.unmapped.append(f"kitti_config.{x.name} (line {x.line})")
            else:
                dataset[key] = _coerce(x.value, hints[key], f"kitti_config.{x.name}")
        if "image_extension" in dataset:
            dataset["image_extension"] = "." + str(dataset["image_extension"]).lstrip(".")
        return True
    if f.name == "image_directory_path":
        dataset.setdefault("root", str(f.value))
        return True
    if f.name == "target_class_mapping":
        if not isinstance(f.value, list):
            raise DataError("target_class_mapping", f"expected {{ key: ... value: ... }} at line {f.line}")
        key = next((x.value for x in f.value if x.name == "key"), None)
        value = next((x.value for x in f.value if x.name == "value"), None)
        if key is None or value is None:
            raise DataError("target_class_mapping", f"map entry at line {f.line} needs a key and a value")
        out.groups.setdefault("dataset", {}).setdefault("target_class_mapping", {})[str(key)] = str(value)
        return True
    return False


def _spatial_semantics(spec: list[Field], out: Imported) -> None:
    """TAO's multisource loader (``dataloader_mode: MULTISOURCE``) reads zoom r > 1 as zooming out and
    ``rotate_rad_max`` as degrees; ours (TLT v1/2's) zooms in for r > 1 and takes radians. Convert, or say which
    meaning was taken."""
    block = next((f.value for f in spec if f.name == "dataset_config" and isinstance(f.value, list)), [])
    mode = next((str(x.value).upper() for x in block if x.name == "dataloader_mode"), None)
    aug = out.groups.get("augmentation", {}).get("spatial_augmentation", {})
    fields = [
        x
        for f in spec
        if f.name == "augmentation_config" and isinstance(f.value, list)
        for b in f.value
        if b.name == "spatial_augmentation" and isinstance(b.value, list)
        for x in b.value
    ]
    line = {x.name: x.line for x in fields}
    zmin, zmax = aug.get("zoom_min", 1.0), aug.get("zoom_max", 1.0)
    rotate = aug.get("rotate_rad_max", 0.0)
    zoom_line, rot_line = line.get("zoom_min", line.get("zoom_max")), line.get("rotate_rad_max")
    if mode == "MULTISOURCE":
        if (zmin, zmax) != (1.0, 1.0) and zmin > 0:
            aug["zoom_min"], aug["zoom_max"] = 1.0 / zmax, 1.0 / zmin
            out.notes.append(
                f"augmentation_config.spatial_augmentation.zoom_min/zoom_max (line {zoom_line}): TAO's multisource "
                f"loader zooms out for r > 1, ours zooms in: converted to zoom_min={1 / zmax:.4g}, "
                f"zoom_max={1 / zmin:.4g} (the same range of scales; r is drawn uniformly in it)"
            )
        if rotate:
            aug["rotate_rad_max"] = math.radians(rotate)
            out.notes.append(
                f"augmentation_config.spatial_augmentation.rotate_rad_max (line {rot_line}): TAO's multisource "
                f"loader reads it in degrees: converted to {math.radians(rotate):.6g} radians"
            )
    elif mode is None and ((zmin, zmax) != (1.0, 1.0) or rotate):
        out.notes.append(
            f"augmentation_config.spatial_augmentation (line {zoom_line or rot_line}): zoom and rotation taken with "
            "TLT v1/2's meaning (r > 1 zooms in, radians); a TAO spec's multisource loader means zoom-out and "
            "degrees: add dataloader_mode: MULTISOURCE to its dataset_config to convert them"
        )


def convert(spec: list[Field]) -> Imported:
    """A parsed spec's blocks as our config groups, with the keys that have no counterpart."""
    out = Imported()
    training_extra: dict = {}
    for f in spec:
        if f.name == "random_seed":
            training_extra["random_seed"] = _coerce(f.value, int, "random_seed")
            continue
        if _convert_spec(f, out):
            continue
        if f.name not in BLOCKS:
            out.unmapped.append(f"{f.name} (line {f.line})")
            continue
        group, tp = BLOCKS[f.name]
        fields = list(f.value) if isinstance(f.value, list) else []
        if group == "dataset":
            _pop(fields, "dataloader_mode")  # read by _spatial_semantics
            sources = [x for x in fields if x.name == "data_sources"]
            if len(sources) > 1:
                raise ConfigError(
                    "dataset_config.data_sources",
                    f"{len(sources)} sources (lines {', '.join(str(x.line) for x in sources)})",
                    "one source: transferdet reads one dataset root; put the images and labels into one KITTI "
                    "folder (image_2/, label_2/), or import one source and convert the others separately",
                )
            for src in _pop(fields, "data_sources"):
                for x in src.value:
                    if x.name == "image_directory_path":
                        out.groups.setdefault("dataset", {})["root"] = str(x.value)
                    elif x.name == "tfrecords_path":
                        out.notes.append(
                            f"dataset_config.data_sources.tfrecords_path (line {x.line}): not needed, "
                            "transferdet converts dataset.root itself"
                        )
                    else:
                        out.unmapped.append(f"dataset_config.data_sources.{x.name} (line {x.line})")
            for ext in _pop(fields, "image_extension"):
                out.groups.setdefault("dataset", {})["image_extension"] = "." + str(ext.value).lstrip(".")
        if group == "model":
            for p in _pop(fields, "training_precision"):
                training_extra["training_precision"] = _message(
                    p.value, S.TrainingPrecisionConfig, "training", "model_config.training_precision", out
                )
            load_graph = any(x.value is True for x in _pop(fields, "load_graph"))
            if load_graph:
                for p in _pop(fields, "pretrained_model_file"):
                    out.groups.setdefault("model", {})["pruned_checkpoint"] = str(p.value)
                    out.notes.append(
                        f"model_config.load_graph (line {p.line}): the pruned model goes to "
                        "model.pruned_checkpoint (a transferdet pruned.ckpt, not a TLT .tlt file)"
                    )
            depth = next((int(x.value) for x in fields if x.name == "num_layers"), 18)
            for p in _pop(fields, "pretrained_model_file"):
                if Path(str(p.value)).suffix.lower() in TLT_MODEL_SUFFIXES and depth != 10:
                    out.groups.setdefault("model", {})["pretrained"] = "imagenet"
                    out.notes.append(
                        f"model_config.pretrained_model_file (line {p.line}): {p.value} is a TLT/Keras "
                        f"model (NGC's ImageNet-pretrained ResNet-{depth}): model.pretrained=imagenet starts "
                        "from torchvision's ImageNet weights of that ResNet instead"
                    )
                elif Path(str(p.value)).suffix.lower() in TLT_MODEL_SUFFIXES:
                    out.notes.append(
                        f"model_config.pretrained_model_file (line {p.line}): {p.value} is a TLT/Keras "
                        "model transferdet cannot read, and ResNet-10 has no public ImageNet weights; set "
                        "model.pretrained_model_file to a transferdet checkpoint (e.g. the default pipeline's)"
                    )
                else:
                    out.groups.setdefault("model", {})["pretrained_model_file"] = str(p.value)
        body = _message(fields, tp, group, f.name, out)
        out.groups[group] = {**out.groups.get(group, {}), **body}
    if training_extra:
        out.groups["training"] = {**out.groups.get("training", {}), **training_extra}
    _spatial_semantics(spec, out)
    return out


def experiment_yaml(imported: Imported, source: Path) -> str:
    """The experiment file's text: a ``# @package _global_`` header of notes, then the groups."""
    head = [
        "# @package _global_",
        f"# Imported from the TLT spec {source} by `transferdet import-spec`.",
        "# Blocks of the spec start from transferdet's schema defaults (TLT's proto defaults), not the",
        "# synthetic quickstart's values.",
    ]
    if imported.unmapped:
        head += ["# Spec keys with no transferdet counterpart (ignored):"] + [f"#   {u}" for u in imported.unmapped]
    head += [f"# Note: {n}" for n in imported.notes]
    head = [line.replace("\r", "\\r").replace("\n", "\\n") for line in head]  # one comment line each
    defaults = {"defaults": [{f"override /{g}": "base"} for g in imported.groups]}
    body = OmegaConf.to_yaml(OmegaConf.create({**defaults, **_literal(imported.groups)}))
    return "\n".join(head) + "\n" + body


def _literal(value: Any) -> Any:
    """Strings of the spec as text, never as OmegaConf interpolations: ``${oc.env:WANDB_API_KEY}`` in a spec
    must not read the environment (and write a secret into config.yaml)."""
    if isinstance(value, dict):
        return {k: _literal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_literal(v) for v in value]
    if isinstance(value, str):
        # OmegaConf reads \${ as a literal ${, and 2n backslashes before ${ as n (the rest stays as written)
        return re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", value)
    return value


def default_output_root() -> Path:
    """Where ``conf/`` of the installed package is (experiments go to its ``experiment/``)."""
    return Path(str(resources.files("transferdet.conf")))


def import_spec(
    spec_path: str | Path, name: str | None = None, output_root: str | Path | None = None, force: bool = False
) -> tuple[Path, Imported]:
    """Write ``<output_root>/experiment/<name>.yaml`` from a TLT spec; check it composes and validates first."""
    spec_path = Path(spec_path)
    if not spec_path.is_file():
        raise ConfigError("spec", str(spec_path), "an existing TLT/TAO DetectNet_v2 experiment spec file (.txt)")
    try:
        text = spec_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(spec_path, f"cannot read the spec as UTF-8 text: {err}") from None
    imported = convert(parse(text, spec_path))
    if not imported.groups:
        raise DataError(
            spec_path, f"no DetectNet_v2 blocks found (expected some of {', '.join([*BLOCKS, 'kitti_config'])})"
        )
    name = name or re.sub(r"[^\w-]+", "_", spec_path.stem)
    if not re.fullmatch(r"[\w-]+", name):
        raise ConfigError("--name", name, "letters, digits, '_' and '-'")
    root = Path(output_root) if output_root else default_output_root()
    target = root / "experiment" / f"{name}.yaml"
    if target.exists() and not force:
        raise ConfigError("--name", name, f"a name not used yet ({target} exists; --force replaces it)")
    # a dataset-convert spec defines a dataset: it must convert (training it also needs per-class settings)
    task = "convert" if set(imported.groups) == {"dataset"} else "train"
    with atomic_path(target) as tmp:
        tmp.write_text(experiment_yaml(imported, spec_path), encoding="utf-8")
        check_composes(root, name, tmp, task)
    return target, imported


def check_composes(root: Path, name: str, candidate: Path, task: str = "train") -> None:
    """Compose and validate ``<task> experiment=<name>`` with the candidate file in place of the final one."""
    S.register_configs()
    with tempfile.TemporaryDirectory() as tmpdir:
        (Path(tmpdir) / "experiment").mkdir()
        probe = f"_import_check_{name}"  # a name no installed experiment has
        shutil.copyfile(candidate, Path(tmpdir) / "experiment" / f"{probe}.yaml")
        try:
            with initialize_config_module("transferdet.conf", version_base="1.3"):
                cfg = compose(task, [f"experiment={probe}", f"hydra.searchpath=[file://{tmpdir}]"])
        except (HydraException, OmegaConfBaseException) as err:
            raise ConfigError(
                f"experiment/{name}.yaml",
                "the imported spec",
                f"a config transferdet accepts: {str(err).splitlines()[0]}",
            ) from None
        try:
            validate(cfg)
        except OmegaConfBaseException as err:
            raise config_error(err) from None
