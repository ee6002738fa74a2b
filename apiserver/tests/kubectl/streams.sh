#!/usr/bin/env bash
# Streams through the apiserver, as a learner types them: exec (stdout, stderr, stdin,
# exit codes, a terminal), cp both ways, port-forward answered through curl, attach and
# run -i --rm. Run by agent/tests/streams.rs against a real apiserver, agent and
# containerd, once for every kubectl on the machine.
#   KUBECTL=... SERVER=http://127.0.0.1:PORT NS=default POD=name IMAGE=... TAG=x streams.sh
# POD runs busybox with `httpd -p 8080`. Prints one line per check and "N passed, M failed".
set -uo pipefail
. "$(dirname "$0")/lib.sh"
: "${KUBECTL:?} ${SERVER:?} ${NS:?} ${POD:?} ${IMAGE:?} ${TAG:?}"
pf=
trap '[[ -n $pf ]] && kill $pf 2>/dev/null; rm -rf "$CACHE" "$WORK"' EXIT
export -f k; export KUBECTL SERVER CACHE NS
export -f equals

check "exec -- cat /etc/hostname" equals "$POD" k exec "$POD" -- cat /etc/hostname
check "exec: stdout and stderr" equals "out
err" k exec "$POD" -- sh -c 'echo out; sleep 0.2; echo err >&2'
check "exec: the exit code" bash -c "k exec $POD -- sh -c 'exit 3'; [[ \$? == 3 ]]"
check "exec -i: stdin to its end" equals "hello from stdin" bash -c "echo 'hello from stdin' | k exec -i $POD -- cat"
check "exec -it: a terminal" bash -c "script -qec \"KUBECONFIG=/dev/null $KUBECTL --server $SERVER --cache-dir $CACHE -n $NS exec -it $POD -- sh -c 'tty; echo TERM=\\\$TERM'\" /dev/null </dev/null | tr -d '\\r' | grep -q 'TERM=xterm' "

# cp both ways (tar through exec, stdin closed at its end).
printf 'copied %s\n' "$TAG" >"$WORK/in.txt"
check "cp to the pod" k cp "$WORK/in.txt" "$POD:/tmp/in-$TAG.txt"
check "... it is there" equals "copied $TAG" k exec "$POD" -- cat "/tmp/in-$TAG.txt"
check "cp from the pod" bash -c "k cp $POD:/tmp/in-$TAG.txt $WORK/out.txt && grep -q 'copied $TAG' $WORK/out.txt"

# port-forward: a local port answered by the pod's httpd.
port=$((20000 + RANDOM % 20000))
k port-forward "pod/$POD" "$port:8080" >"$WORK/pf.log" 2>&1 &
pf=$!
for _ in $(seq 40); do grep -q Forwarding "$WORK/pf.log" && break; sleep 0.25; done
check "port-forward answered through curl" bash -c "curl -s -m 5 http://127.0.0.1:$port/ | grep -q HOSTNAME:$POD"
check "... and again (a second connection)" bash -c "curl -s -m 5 http://127.0.0.1:$port/ | grep -q HOSTNAME:$POD"
kill "$pf" 2>/dev/null; wait "$pf" 2>/dev/null; pf=

# run -i --rm: a pod made to be attached to, its stdin from here, deleted at the end.
check "run -i --rm (attach)" bash -c "echo ping | k run rm-$TAG --image=$IMAGE --restart=Never -i --rm --command -- sh -c 'read l; echo got:\$l' 2>&1 | grep -q 'got:ping'"
check "... the pod is gone" bash -c "for i in \$(seq 40); do k get pod rm-$TAG >/dev/null 2>&1 || exit 0; sleep 0.25; done; exit 1"
# (attach shows output from when it connects on, as in Kubernetes: the command waits a moment.)
check "run -it --rm with a terminal" bash -c "script -qec \"KUBECONFIG=/dev/null $KUBECTL --server $SERVER --cache-dir $CACHE -n $NS run tty-$TAG --image=$IMAGE --restart=Never -it --rm --command -- sh -c 'sleep 1; tty; echo done'\" /dev/null </dev/null | tr -d '\\r' | grep -q '/dev/pts'"

echo "$passed passed, $failed failed"
((failed == 0))
