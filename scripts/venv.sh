# Sourced by scripts/test and scripts/demo: create .venv with python3 (3.11+) when missing and
# install the project into it, again only when pyproject.toml or the extras asked for changed.
# Usage: setup_venv EXTRAS   (e.g. "test", or "" for the package alone)
setup_venv() {
    local extras=$1 spec=. stamp=.venv/.installed
    [[ -z $extras ]] || spec=".[$extras]"
    if [[ ! -x .venv/bin/python ]]; then
        python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
            || { echo "$0: python3 is older than 3.11" >&2; exit 1; }
        python3 -m venv .venv
    fi
    # The stamp is pyproject.toml plus the extras last installed. Test extras cover the demo too.
    if ! { cmp -s <(cat pyproject.toml; echo "extras=$extras") "$stamp" \
           || { [[ -z $extras ]] && cmp -s <(cat pyproject.toml; echo "extras=test") "$stamp"; }; }; then
        .venv/bin/python -m pip install -e "$spec"
        { cat pyproject.toml; echo "extras=$extras"; } > "$stamp"
    fi
}

# The test Triton server (tests/support/triton_server.py) runs under .venv-triton: a venv of Debian's
# /usr/bin/python3 with PyTriton, which bundles tritonserver. Not the pyenv python3: PyTriton's python
# stub fails inside Triton with `_thread.RLock has no attribute _recursion_count` under it. numpy<2:
# under numpy 2 PyTriton 0.7 returns empty outputs. Built when missing or when these pins change.
TRITON_VENV_PACKAGES=("nvidia-pytriton>=0.7,<0.8" "numpy<2" "onnxruntime>=1.17")
setup_triton_venv() {
    local stamp=.venv-triton/.installed
    if [[ ! -x .venv-triton/bin/python ]]; then
        [[ -x /usr/bin/python3 ]] || { echo "$0: /usr/bin/python3 (Debian's) is needed for .venv-triton" >&2; return 1; }
        /usr/bin/python3 -m venv .venv-triton
    fi
    if ! cmp -s <(printf '%s\n' "${TRITON_VENV_PACKAGES[@]}") "$stamp"; then
        .venv-triton/bin/python -m pip install "${TRITON_VENV_PACKAGES[@]}"
        printf '%s\n' "${TRITON_VENV_PACKAGES[@]}" > "$stamp"
    fi
}
