# bash completion for coralctl. Source it, or install it as
# /usr/share/bash-completion/completions/coralctl (scripts/install.sh does).
# coralctl itself decides what to offer (`coralctl __complete`): commands
# and options from its parser, and service names, function names, agents
# and session ids asked of the colony (or of the agent with --local)
# within 2 s. With the bash-completion package, names holding ':' (C++
# and Rust names, FILE:NAME, LIBRARY:NAME) complete as one word.
_coralctl() {
    local IFS=$'\n' found cur words cword
    if declare -F _get_comp_words_by_ref >/dev/null; then
        _get_comp_words_by_ref -n =: cur words cword
    else
        words=("${COMP_WORDS[@]}"); cword=$COMP_CWORD; cur=${COMP_WORDS[COMP_CWORD]}
    fi
    found=($(coralctl __complete "$cword" "${words[@]}" 2>/dev/null))
    if [ "${found[0]}" = "__files__" ]; then
        COMPREPLY=($(compgen -f -- "$cur"))
    else
        COMPREPLY=("${found[@]}")
        if declare -F __ltrim_colon_completions >/dev/null; then __ltrim_colon_completions "$cur"; fi
    fi
}
complete -F _coralctl coralctl
