# bash completion for coralctl. Source it, or install it as
# /usr/share/bash-completion/completions/coralctl (make install does).
# Service names and session ids are asked of the colony (or of the agent
# with --local), quickly: a 2 s timeout.
_coralctl_ask() {
    local local_flag=""
    [[ " ${COMP_WORDS[*]} " == *" --local "* ]] && local_flag="--local"
    coralctl $local_flag --timeout 2s --output json "$@" 2>/dev/null
}

_coralctl() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
    local global="--local --endpoint --output --timeout --config --key --colony-key --help"
    case "$prev" in
        --output) COMPREPLY=($(compgen -W "text json" -- "$cur")); return ;;
        --duration|--timeout|--since|--slow|--min-duration) COMPREPLY=($(compgen -W "30s 60s 90s 5m 10m" -- "$cur")); return ;;
        --config|--save|--key|--colony-key|--dir) COMPREPLY=($(compgen -f -- "$cur")); return ;;
        --agent) COMPREPLY=($(compgen -W "$(_coralctl_ask services | sed -n 's/.*"agent_id":"\([^"]*\)".*/\1/p' | sort -u)" -- "$cur")); return ;;
        --function|--pattern|--where|--endpoint|--sample-rate|--max-events|--service) return ;;
    esac
    local cmd="" sub="" positional=0 w
    for w in "${COMP_WORDS[@]:1:COMP_CWORD-1}"; do
        case "$w" in
            -*) ;;
            *) if [ -z "$cmd" ]; then cmd=$w
               elif { [ "$cmd" = debug ] || [ "$cmd" = keys ]; } && [ -z "$sub" ]; then sub=$w
               else positional=$((positional + 1)); fi ;;
        esac
    done
    if [[ "$cur" == -* ]]; then
        local flags="$global"
        case "$cmd/$sub" in
            debug/attach) flags+=" --function --agent --duration --capture-args --capture-return --sample-rate --max-events --min-duration --where --slow --save --no-save" ;;
            debug/sessions) flags+=" --active --service" ;;
            debug/events) flags+=" --since --follow --slow --save" ;;
            functions/) flags+=" --pattern" ;;
            audit/) flags+=" --since --max" ;;
            keys/generate) flags+=" --dir" ;;
        esac
        COMPREPLY=($(compgen -W "$flags" -- "$cur"))
        return
    fi
    case "$cmd/$sub" in
        /) COMPREPLY=($(compgen -W "ping services functions debug audit keys" -- "$cur")) ;;
        debug/) COMPREPLY=($(compgen -W "attach sessions events detach" -- "$cur")) ;;
        keys/) COMPREPLY=($(compgen -W "generate" -- "$cur")) ;;
        functions/|debug/attach)
            [ "$positional" -eq 0 ] && COMPREPLY=($(compgen -W "$(_coralctl_ask services | sed -n 's/.*"service":"\([^"]*\)".*/\1/p' | sort -u)" -- "$cur")) ;;
        debug/events|debug/detach)
            [ "$positional" -eq 0 ] && COMPREPLY=($(compgen -W "$(_coralctl_ask debug sessions | sed -n 's/.*"session_id":"\([^"]*\)".*/\1/p')" -- "$cur")) ;;
    esac
}
complete -F _coralctl coralctl
