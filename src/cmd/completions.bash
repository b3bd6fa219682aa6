
# strata's bash completion: each TAB runs `COMPLETE=bash strata -- WORDS…`
# (clap_complete's protocol) for the candidates.
#
# Written for strata rather than clap_complete's registration: bash splits
# words at the `:` and `=` of COMP_WORDBREAKS (`sha256:ab` is `sha256 : ab`,
# `--root=DIR` is `--root = DIR`), so strata is passed the words as typed,
# rejoined from COMP_LINE, without their quotes; a candidate is inserted
# trimmed of the part of the word bash does not replace (up to the last `:`
# or `=`) and quoted, so keys with spaces or other shell characters stay one
# word. Needs bash 4.4 or later, not the bash-completion package.

# The value of shell word $1 with its quotes and backslashes removed (no
# expansion), in REPLY; the quote still open at its end (' or ") in open.
__strata_dequote() {
    local in=$1 c i
    REPLY= open=
    for ((i = 0; i < ${#in}; i++)); do
        c=${in:i:1}
        if [[ $open == "'" ]]; then
            if [[ $c == "'" ]]; then open=; else REPLY+=$c; fi
        elif [[ $open == '"' ]]; then
            if [[ $c == '"' ]]; then
                open=
            elif [[ $c == '\' && ${in:i+1:1} == [\"\\\$\`] ]]; then
                REPLY+=${in:i+1:1}
                ((i++))
            else
                REPLY+=$c
            fi
        elif [[ $c == "'" || $c == '"' ]]; then
            open=$c
        elif [[ $c == '\' ]]; then
            REPLY+=${in:i+1:1}
            ((i++))
        else
            REPLY+=$c
        fi
    done
}

_clap_complete_strata() {
    local space
    if compopt +o nospace 2>/dev/null; then
        space=false
    else
        space=true
    fi
    # The words up to the cursor, those bash split at `:` or `=` joined
    # again: COMP_LINE shows no whitespace between them.
    local line=${COMP_LINE:0:COMP_POINT} rest word prev= i n=-1 gap
    local -a raw=()
    for ((i = 0; i <= COMP_CWORD; i++)); do
        word=${COMP_WORDS[i]}
        rest=${line#"${line%%[![:space:]]*}"}
        gap=$((${#rest} != ${#line}))
        line=$rest
        if ((i == COMP_CWORD)); then
            word=$line
        elif [[ $line == "$word"* ]]; then
            line=${line:${#word}}
        else
            # A line that does not read as its words: take them as bash
            # split them.
            raw=("${COMP_WORDS[@]:0:COMP_CWORD}" "$2")
            n=$COMP_CWORD
            break
        fi
        if ((n >= 0 && !gap)) && [[ $word == [:=]* || $prev == *[:=] ]]; then
            raw[n]+=$word
        else
            raw[++n]=$word
        fi
        prev=$word
    done
    local REPLY open
    local -a args=()
    for word in "${raw[@]}"; do
        __strata_dequote "$word"
        args+=("$REPLY")
    done
    # Bash replaces only the end of the word being completed ($2): after
    # its last `:` or `=`, or after its opening quote.
    local kept=${raw[n]}
    if [[ $kept == *"$2" ]]; then
        kept=${kept%"$2"}
    else
        kept=${kept%"${kept##*[:=]}"}
    fi
    __strata_dequote "$kept"
    kept=$REPLY
    local out
    out=$(
        _CLAP_IFS=$'\013' \
            _CLAP_COMPLETE_INDEX=$n \
            _CLAP_COMPLETE_COMP_TYPE=${COMP_TYPE-} \
            _CLAP_COMPLETE_SPACE=$space \
            COMPLETE=bash \
            strata -- "${args[@]}"
    )
    if [[ $? != 0 ]]; then
        unset COMPREPLY
        return
    fi
    COMPREPLY=()
    local candidate first= sq="'\\''"
    while [[ -n $out ]]; do
        candidate=${out%%$'\013'*}
        if [[ $out == *$'\013'* ]]; then out=${out#*$'\013'}; else out=; fi
        [[ -n $candidate && $candidate == "$kept"* ]] || continue
        : "${first:=$candidate}"
        rest=${candidate:${#kept}}
        if [[ $open == "'" ]]; then
            rest=${rest//\'/"$sq"}
        elif [[ $open == '"' ]]; then
            rest=${rest//\\/"\\\\"}
            rest=${rest//\"/"\\\""}
            rest=${rest//\$/"\\\$"}
            rest=${rest//\`/"\\\`"}
        elif [[ -n $rest ]]; then
            printf -v rest %q "$rest"
        fi
        COMPREPLY+=("$rest")
    done
    if [[ $space == false && $first =~ [=/:]$ ]]; then
        compopt -o nospace
    fi
}
if [[ "${BASH_VERSINFO[0]}" -eq 4 && "${BASH_VERSINFO[1]}" -ge 4 || "${BASH_VERSINFO[0]}" -gt 4 ]]; then
    complete -o nospace -o bashdefault -o nosort -F _clap_complete_strata strata
else
    complete -o nospace -o bashdefault -F _clap_complete_strata strata
fi
