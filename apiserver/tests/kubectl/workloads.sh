#!/usr/bin/env bash
# Deployments the way a learner drives them, with kubectl's own rollout machinery:
# create, scale, set image, rollout status|history|undo|restart|pause|resume, delete.
# Run by tests/workloads.rs once for every kubectl on the machine, with a stand-in
# kubelet marking pods Ready.
#   KUBECTL=/path/to/kubectl SERVER=http://127.0.0.1:PORT NS=name workloads.sh
# Prints one line per check and "N passed, M failed"; exits non-zero if any failed.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
: "${KUBECTL:?} ${SERVER:?} ${NS:?}"
image() { k get deployment web -o 'jsonpath={.spec.template.spec.containers[0].image}'; }
rolled() { k rollout status deployment/web --timeout=30s; }

k create namespace "$NS" >/dev/null
check "create deployment" equals "deployment.apps/web created" k create deployment web --image=whoami:v1 --replicas=2
check "rollout status waits for it" contains 'deployment "web" successfully rolled out' rolled
check "get deployment: READY 2/2" contains "2/2" k get deployment web
check "get replicasets: its one ReplicaSet" equals "1" bash -c "KUBECONFIG=/dev/null $KUBECTL --server $SERVER -n $NS get rs -l app=web --no-headers | wc -l"
check "scale to 3" equals "deployment.apps/web scaled" k scale deployment web --replicas=3
check "three available" eventually 20 equals "3" k get deployment web -o 'jsonpath={.status.availableReplicas}'
check "set image" equals "deployment.apps/web image updated" k set image deployment/web whoami=whoami:v2
check "the new image rolls out" contains "successfully rolled out" rolled
check "rollout history lists both revisions" contains "2 " k rollout history deployment/web
check "rollout history --revision=1 shows v1" contains "whoami:v1" k rollout history deployment/web --revision=1
check "rollout undo" contains "rolled back" k rollout undo deployment/web
check "undo rolls out" contains "successfully rolled out" rolled
check "undo brought v1 back" equals "whoami:v1" image
check "its revision is now 3" eventually 10 equals "3" k get deployment web -o 'jsonpath={.metadata.annotations.deployment\.kubernetes\.io/revision}'
check "rollout restart" contains "restarted" k rollout restart deployment/web
check "restart rolls out" contains "successfully rolled out" rolled
check "restart stamped the template" contains "T" k get deployment web -o 'jsonpath={.spec.template.metadata.annotations.kubectl\.kubernetes\.io/restartedAt}'
check "rollout pause" contains "paused" k rollout pause deployment/web
k set image deployment/web whoami=whoami:v3 >/dev/null
sleep 2
check "paused: the running pods keep v1" equals "whoami:v1" k get rs -l app=web -o 'jsonpath={range .items[?(@.spec.replicas>0)]}{.spec.template.spec.containers[0].image}{end}'
check "rollout resume" contains "resumed" k rollout resume deployment/web
check "resumed: v3 rolls out" contains "successfully rolled out" rolled
check "every pod runs v3" eventually 20 equals "whoami:v3 whoami:v3 whoami:v3 " k get pods -l app=web --field-selector=status.phase=Running -o 'jsonpath={range .items[*]}{.spec.containers[0].image} {end}'
check "describe shows ScalingReplicaSet events" contains "ScalingReplicaSet" k describe deployment web
check "delete deployment" contains "deleted" k delete deployment web
no_pods() { [[ -z $(k get pods,rs -l app=web --no-headers 2>/dev/null) ]]; }
check "its ReplicaSets and pods go with it" eventually 20 no_pods
finish
