"""Render a kustomization: with ``kubectl kustomize`` where it is installed, otherwise with
:func:`render`, a small renderer of the kustomize features deploy/k8s uses.

The features: ``resources`` (files and directories), ``namespace``, ``labels`` (metadata
only), ``images`` and inline JSON 6902 ``patches`` with a kind/name target.
tests/deploy/test_k8s.py checks that both give the same objects where kubectl exists.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

Doc = dict[str, Any]


def kubectl_render(path: Path) -> list[Doc]:
    kubectl = shutil.which("kubectl")
    assert kubectl
    out = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def rendered(path: Path) -> tuple[str, list[Doc]]:
    """``(renderer name, objects)``: kubectl where present, else our own."""
    if shutil.which("kubectl"):
        return "kubectl kustomize", kubectl_render(path)
    return "tests/deploy/kustomize.py", render(path)


def render(path: Path) -> list[Doc]:
    k = yaml.safe_load((path / "kustomization.yaml").read_text())
    known = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches"}
    unknown = set(k) - known
    assert not unknown, f"{path}: the fallback renderer does not support {sorted(unknown)}"
    docs: list[Doc] = []
    for entry in k.get("resources", []):
        target = path / entry
        if target.is_dir():
            docs += render(target)
        else:
            docs += [d for d in yaml.safe_load_all(target.read_text()) if d]
    for patch in k.get("patches", []):
        ops = yaml.safe_load(patch["patch"])
        assert isinstance(ops, list), "only JSON 6902 patches are supported"
        for doc in docs:
            if _targets(patch.get("target", {}), doc):
                for op in ops:
                    _apply(doc, op)
    if "namespace" in k:
        for doc in docs:
            doc["metadata"]["namespace"] = k["namespace"]
    for group in k.get("labels", []):
        assert not group.get("includeSelectors") and not group.get("includeTemplates")
        for doc in docs:
            doc["metadata"].setdefault("labels", {}).update(group["pairs"])
    for image in k.get("images", []):
        for doc in docs:
            for container in _containers(doc):
                _retag(container, image)
    return docs


def _targets(target: dict[str, Any], doc: Doc) -> bool:
    if "kind" in target and target["kind"] != doc["kind"]:
        return False
    return not ("name" in target and not re.fullmatch(target["name"], doc["metadata"]["name"]))


def _apply(doc: Doc, op: dict[str, Any]) -> None:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
    parent: Any = doc
    for p in parts[:-1]:
        parent = parent[int(p)] if isinstance(parent, list) else parent[p]
    last = parts[-1]
    if op["op"] == "remove":
        del parent[int(last) if isinstance(parent, list) else last]
    elif op["op"] in ("add", "replace"):
        if op["op"] == "replace":
            assert (int(last) < len(parent)) if isinstance(parent, list) else last in parent, op["path"]
        if isinstance(parent, list):
            index = len(parent) if last == "-" else int(last)
            if op["op"] == "add":
                parent.insert(index, copy.deepcopy(op["value"]))
            else:
                parent[index] = copy.deepcopy(op["value"])
        else:
            parent[last] = copy.deepcopy(op["value"])
    else:
        raise AssertionError(f"unsupported patch op {op['op']}")


def _containers(doc: Doc) -> list[dict[str, Any]]:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return [*spec.get("containers", []), *spec.get("initContainers", [])]


def _retag(container: dict[str, Any], image: dict[str, str]) -> None:
    ref = container["image"]
    name, _, tag = ref.partition(":") if "@" not in ref else (ref, "", "")
    if name != image["name"]:
        return
    container["image"] = f"{image.get('newName', name)}:{image['newTag']}" if image.get("newTag") or tag else \
        image.get("newName", name)
    if not image.get("newTag") and tag:
        container["image"] = f"{image.get('newName', name)}:{tag}"
