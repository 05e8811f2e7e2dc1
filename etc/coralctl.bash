# bash completion for coralctl. Source it, or install it as
# /usr/share/bash-completion/completions/coralctl (scripts/install.sh does).
# coralctl itself decides what to offer (`coralctl __complete`): commands
# and options from its parser, and service names, function names, agents
# and session ids asked of the colony (or of the agent with --local)
# within 2 s. Names holding ':' (C++ and Rust names, FILE:NAME,
# LIBRARY:NAME) complete as one word, with or without the bash-completion
# package: bash splits the line at ':' (COMP_WORDBREAKS), so the words are
# taken from the line itself, split at blanks only, and each answer loses
# the part before the word's last ':', which bash leaves in place.
_coralctl() {
    local IFS=$'\n' found cur words cword i
    if declare -F _get_comp_words_by_ref >/dev/null; then
        _get_comp_words_by_ref -n =: cur words cword
    else
        IFS=$' \t\n' read -r -a words <<< "${COMP_LINE:0:COMP_POINT}"
        case "${COMP_LINE:0:COMP_POINT}" in *[[:blank:]]) words+=("") ;; esac
        cword=$((${#words[@]} - 1)); cur=${words[cword]}
    fi
    found=($(coralctl __complete "$cword" "${words[@]}" 2>/dev/null))
    if [ "${found[0]}" = "__files__" ]; then
        COMPREPLY=($(compgen -f -- "$cur"))
    else
        COMPREPLY=("${found[@]}")
        if [[ $cur == *:* && $COMP_WORDBREAKS == *:* ]]; then
            for i in "${!COMPREPLY[@]}"; do COMPREPLY[i]=${COMPREPLY[i]#"${cur%"${cur##*:}"}"}; done
        fi
    fi
}
complete -F _coralctl coralctl
