#!/usr/bin/env bash
# Build and push vxdeploy's container images (`make images`).
#
#   REGISTRY=us-docker.pkg.dev/PROJECT/REPO containers/build.sh [--print] [--no-push] [IMAGE...]
#
# Tags (VERSION-REVISION, the revision a digest of the image sources: 0.1.0-3f9c2a7d41be) and build
# args come from components/common/images.py: the tags a pipeline compiled from the same sources
# for the same REGISTRY names. --print lists tags and build args and stops; it needs no Docker.
# Building needs a reachable Docker daemon with BuildKit (the default since Docker 23), which
# reads each Dockerfile's own .dockerignore.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-}"
if [[ -z "${PYTHON}" ]]; then
  if [[ -x "${ROOT}/.venv/bin/python" ]]; then PYTHON="${ROOT}/.venv/bin/python"; else PYTHON=python3; fi
fi
REGISTRY="${REGISTRY:-${VXDEPLOY_REGISTRY:-}}"
PRINT_ONLY=0
PUSH=1
NAMES=()
for arg in "$@"; do
  case "${arg}" in
    --print) PRINT_ONLY=1 ;;
    --no-push) PUSH=0 ;;
    -h|--help) sed -n '2,10p' "${BASH_SOURCE[0]}"; exit 0 ;;
    -*) echo "build.sh: unknown option ${arg}" >&2; exit 2 ;;
    *) NAMES+=("${arg}") ;;
  esac
done

# images.py imports nothing but the standard library: it runs as a file, installed or not.
images() { "${PYTHON}" "${ROOT}/components/common/images.py" "$@"; }
# VERSION-REVISION (a digest of the image sources), read once so that every image of this build
# gets the same tag even if a file changes meanwhile; a changed source is a new tag, never an old one.
VXDEPLOY_IMAGE_TAG="${VXDEPLOY_IMAGE_TAG:-$(images image-tag)}"
export VXDEPLOY_IMAGE_TAG
if [[ ${#NAMES[@]} -eq 0 ]]; then mapfile -t NAMES < <(images names); fi

if [[ ${PRINT_ONLY} -eq 0 ]]; then
  if [[ -z "${REGISTRY}" ]]; then
    echo "build.sh: set REGISTRY (e.g. REGISTRY=us-docker.pkg.dev/my-project/vxdeploy make images)" >&2
    exit 2
  fi
  if ! command -v docker >/dev/null 2>&1; then
    echo "build.sh: no docker command on this machine; nothing was built. Run it where Docker is installed." >&2
    exit 3
  fi
  if ! docker info >/dev/null 2>&1; then
    echo "build.sh: no Docker daemon is reachable (\`docker info\` failed${DOCKER_HOST:+ for DOCKER_HOST=${DOCKER_HOST}}); nothing was built. Start Docker or run on a machine with a daemon." >&2
    exit 3
  fi
fi

for name in "${NAMES[@]}"; do
  tag="$(images tag "${name}" --registry "${REGISTRY}")"
  mapfile -t build_args < <(images build-args "${name}")
  if [[ ${PRINT_ONLY} -eq 1 ]]; then
    echo "${tag}"
    printf '  --build-arg %s\n' "${build_args[@]}"
    continue
  fi
  flags=()
  for kv in "${build_args[@]}"; do flags+=(--build-arg "${kv}"); done
  echo "build.sh: building ${tag}"
  DOCKER_BUILDKIT=1 docker build "${flags[@]}" -f "${ROOT}/containers/${name}/Dockerfile" -t "${tag}" "${ROOT}"
  if [[ ${PUSH} -eq 1 ]]; then docker push "${tag}"; fi
done

if [[ ${PRINT_ONLY} -eq 0 ]]; then
  echo "build.sh: done. Compile the pipeline against these tags: VXDEPLOY_REGISTRY=${REGISTRY} vxdeploy compile"
fi
