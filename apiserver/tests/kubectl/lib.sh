# What every kubectl check script shares (sourced): `k` runs kubectl against $SERVER in
# namespace $NS with its own cache; `check` runs one check and counts it; `equals`,
# `contains` and `eventually` are the assertions; `finish` prints the tally and fails if
# any check did.
CACHE=$(mktemp -d)
WORK=$(mktemp -d)
trap 'rm -rf "$CACHE" "$WORK"' EXIT
passed=0 failed=0
k() { KUBECONFIG=/dev/null "$KUBECTL" --server "$SERVER" --cache-dir "$CACHE" -n "$NS" "$@"; }
check() { # description, command...
  local what=$1; shift
  local out
  if out=$("$@" 2>&1); then passed=$((passed + 1)); echo "ok   - $what"
  else failed=$((failed + 1)); echo "FAIL - $what"; sed 's/^/       /' <<<"$out" | tail -5; fi
}
equals() { # expected, command...
  local want=$1; shift
  local got; got=$("$@" 2>&1)
  [[ $got == "$want" ]] || { echo "wanted [$want], got [$got]"; return 1; }
}
contains() { # expected substring, command...
  local want=$1; shift
  local got; got=$("$@" 2>&1)
  [[ $got == *"$want"* ]] || { echo "wanted [$want] in:"; echo "$got"; return 1; }
}
eventually() { # seconds, command...: retried until it succeeds; its last output shown if not
  local secs=$1; shift
  for _ in $(seq $((secs * 4))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
  "$@"
}
finish() {
  echo "$passed passed, $failed failed"
  [[ $failed == 0 ]]
}
