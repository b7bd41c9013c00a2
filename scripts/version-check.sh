#!/usr/bin/env bash
# One version, from one place: `[workspace.package] version` in Cargo.toml. Checks that everything
# a user installs says the same:
#   - every workspace crate takes the workspace version (so `stead --version` and
#     `stead-operator --version` print it), and Cargo.lock agrees (the images build --locked);
#   - charts/stead/Chart.yaml: `version` and `appVersion`;
#   - charts/stead/values.yaml: the default image tags (empty = appVersion) and repositories;
#   - the example manifests (examples/*/k8s/*.yaml): each app image is a published image
#     (scripts/release-images.sh list) of this version;
#   - every other mention of a published image or of the chart in the docs, the chart and the
#     examples (`ghcr.io/stead-dev/<image>:<tag>`, `oci://…/charts/stead --version <v>`).
#
#   version-check.sh                  the checks above
#   version-check.sh --print          prints the version, nothing else
#   version-check.sh --tag v1.2.3     also fails unless the tag is v<version> (the release workflow)
#   version-check.sh --registry P     images are expected under P (default ghcr.io/stead-dev)
#   version-check.sh --binaries DIR   also runs DIR/stead --version and DIR/stead-operator --version
set -euo pipefail
cd "$(dirname "$0")/.."

images="$(scripts/release-images.sh list)"
exec python3 - "$images" "$@" <<'EOF'
import glob, os, re, subprocess, sys, tomllib

published = sys.argv[1].split()
args = sys.argv[2:]
opts = {"--print": False, "--tag": None, "--registry": "ghcr.io/stead-dev", "--binaries": None}
while args:
    a = args.pop(0)
    if a == "--print":
        opts[a] = True
    elif a in opts and args:
        opts[a] = args.pop(0)
    else:
        sys.exit(f"version-check: unknown argument {a!r} (see the head of scripts/version-check.sh)")

errors = []


def check(ok, msg):
    if not ok:
        errors.append(msg)


with open("Cargo.toml", "rb") as f:
    workspace = tomllib.load(f)
version = workspace.get("workspace", {}).get("package", {}).get("version")
if not isinstance(version, str) or not re.fullmatch(r"\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?", version):
    sys.exit(f"version-check: FAILED: Cargo.toml [workspace.package] version is {version!r}, not a semver version")
if opts["--print"]:
    print(version)
    sys.exit(0)

import yaml  # after --print, which needs only Python

# Crates and Cargo.lock.
members = []
for member in workspace["workspace"]["members"]:
    with open(os.path.join(member, "Cargo.toml"), "rb") as f:
        package = tomllib.load(f)["package"]
    members.append(package["name"])
    check(package.get("version") == {"workspace": True},
          f"{member}/Cargo.toml: version is {package.get('version')!r}; use version.workspace = true")
with open("Cargo.lock", "rb") as f:
    locked = {p["name"]: p["version"] for p in tomllib.load(f)["package"] if "source" not in p}
for name in members:
    check(locked.get(name) == version,
          f"Cargo.lock: {name} is {locked.get(name)}, Cargo.toml says {version} (run cargo update --workspace)")

# The chart.
chart = yaml.safe_load(open("charts/stead/Chart.yaml"))
for key in ("version", "appVersion"):
    check(str(chart.get(key)) == version, f"charts/stead/Chart.yaml: {key} is {chart.get(key)!r}, want {version!r}")
values = yaml.safe_load(open("charts/stead/values.yaml"))
prefix = opts["--registry"]
for path, image in (("image", values["image"]), ("sidecar.image", values["sidecar"]["image"])):
    check(image.get("tag") in ("", None, version),
          f"charts/stead/values.yaml: {path}.tag is {image.get('tag')!r}; leave it empty (appVersion) or {version!r}")
want = {"image": f"{prefix}/stead-operator", "sidecar.image": f"{prefix}/stead"}
for path, image in (("image", values["image"]), ("sidecar.image", values["sidecar"]["image"])):
    check(image.get("repository") == want[path],
          f"charts/stead/values.yaml: {path}.repository is {image.get('repository')!r}, want {want[path]!r}")

# The examples' DurableNamespaces.
manifests = sorted(glob.glob("examples/*/k8s/*.yaml"))
check(manifests, "no examples/*/k8s/*.yaml")
for path in manifests:
    for doc in yaml.safe_load_all(open(path)):
        if not doc or doc.get("kind") != "DurableNamespace":
            continue
        image = doc["spec"]["app"]["image"]
        want = f"{prefix}/stead-{path.split('/')[1]}:{version}"
        check(image == want, f"{path}: app.image is {image!r}, want {want!r}")
        check(want.split("/")[-1].split(":")[0] in published,
              f"{path}: {want} is not an image the release publishes (scripts/release-images.sh)")

# Every mention in the docs, the chart and the examples.
texts = sorted(set(glob.glob("docs/**/*.md", recursive=True) + glob.glob("charts/stead/**/*", recursive=True)
                   + glob.glob("examples/*/k8s/*") + glob.glob("docker/*") + ["README.md"]))
image_ref = re.compile(rf"{re.escape(prefix)}/([a-z0-9][a-z0-9._-]*)(:[^\s\"'`)|,]+)?")
chart_ref = re.compile(rf"oci://{re.escape(prefix)}/charts/stead\b[^\n]*?--version[ =]([^\s\\]+)")
mentions = 0
for path in texts:
    if not os.path.isfile(path):
        continue
    text = open(path, encoding="utf-8").read()
    for m in image_ref.finditer(text):
        name, tag = m.group(1), (m.group(2) or "")[1:]
        if name == "charts":
            continue
        mentions += 1
        line = text.count("\n", 0, m.start()) + 1
        check(name in published, f"{path}:{line}: {m.group(0)} is not an image the release publishes")
        check(tag in ("", version, "<version>", "$V", "${V}"),
              f"{path}:{line}: {m.group(0)} has tag {tag!r}, want {version!r}")
    for m in chart_ref.finditer(text):
        mentions += 1
        line = text.count("\n", 0, m.start()) + 1
        check(m.group(1) in (version, "<version>", "$V", "${V}"),
              f"{path}:{line}: the chart is installed with --version {m.group(1)}, want {version}")

if opts["--tag"] is not None:
    check(opts["--tag"] == f"v{version}",
          f"the tag is {opts['--tag']!r} but Cargo.toml's version is {version!r}: tag v{version}, or change the version")

if opts["--binaries"]:
    for binary in ("stead", "stead-operator"):
        path = os.path.join(opts["--binaries"], binary)
        try:
            out = subprocess.run([path, "--version"], capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError) as e:
            errors.append(f"{path} --version: {e}")
            continue
        check(out == f"{binary} {version}", f"{path} --version says {out!r}, want {binary + ' ' + version!r}")

if errors:
    for e in errors:
        print(f"version-check: FAILED: {e}", file=sys.stderr)
    sys.exit(1)
print(f"version-check: ok: {version} in Cargo.toml, {len(members)} crates, Cargo.lock, Chart.yaml, "
      f"values.yaml, {len(manifests)} example manifests, {mentions} mentions in docs and chart")
EOF
