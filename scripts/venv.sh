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
