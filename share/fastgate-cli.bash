# bash completion for fastgate-cli
#
# Install: copy to /usr/share/bash-completion/completions/fastgate-cli, or source it.
# The words come from fastgate-cli itself (`fastgate-cli --complete WORD...`), so this file
# never goes stale; route names, key ids, user ids and upstream ids are asked of the running
# daemon.

_fastgate_cli_daemon() {
    # $1: noun to list ("route", "key", "user" or "upstream"); remaining args: global
    # options from the line. A daemon without that list (an older one) offers nothing.
    local what=$1; shift
    local out
    out=$("${_fastgate_cli_bin}" "$@" --json "$what" list 2>/dev/null) || return 0
    if [[ $what == route ]]; then
        printf '%s\n' "$out" | grep -o '"name":"[^"]*"' | sed 's/^"name":"//; s/"$//'
    elif [[ $what == upstream ]]; then
        printf '%s\n' "$out" | grep -o '"id":"[^"]*"' | sed 's/^"id":"//; s/"$//'
    else
        printf '%s\n' "$out" | grep -o '"id":[0-9]*' | sed 's/^"id"://'
    fi
}

_fastgate_cli() {
    local cur=${COMP_WORDS[COMP_CWORD]}
    local -a before=() globals=()
    local i w
    _fastgate_cli_bin=${COMP_WORDS[0]}

    for ((i = 1; i < COMP_CWORD; i++)); do
        w=${COMP_WORDS[i]}
        before+=("$w")
        if [[ $w == --socket ]] && ((i + 1 < COMP_CWORD)); then
            globals+=(--socket "${COMP_WORDS[i + 1]}")
        elif [[ $w == --socket=* ]]; then
            globals+=("$w")
        fi
    done

    local -a words=() candidates=()
    local line
    while IFS= read -r line; do
        case $line in
        @file)
            COMPREPLY=($(compgen -f -- "$cur"))
            return 0
            ;;
        @route | @key | @user | @upstream)
            while IFS= read -r w; do candidates+=("$w"); done \
                < <(_fastgate_cli_daemon "${line#@}" "${globals[@]}")
            ;;
        @routes)
            # Comma-separated list: complete the part after the last comma.
            local prefix=${cur%,*} last=${cur##*,}
            [[ $cur == *,* ]] && prefix+="," || prefix=""
            while IFS= read -r w; do
                [[ $w == "$last"* ]] && candidates+=("$prefix$w")
            done < <(_fastgate_cli_daemon route "${globals[@]}")
            COMPREPLY=("${candidates[@]}")
            compopt -o nospace 2>/dev/null
            return 0
            ;;
        *) words+=("$line") ;;
        esac
    done < <("$_fastgate_cli_bin" --complete "${before[@]}" 2>/dev/null)

    COMPREPLY=($(compgen -W "${words[*]} ${candidates[*]}" -- "$cur"))
    return 0
}

complete -F _fastgate_cli fastgate-cli
