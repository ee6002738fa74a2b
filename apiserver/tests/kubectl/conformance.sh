#!/usr/bin/env bash
# What a learner types with kubectl, checked against a real apiserver on etcd. Run by
# tests/kubectl_versions.rs once for every kubectl on the machine (1.27 ... 1.33).
#   KUBECTL=/path/to/kubectl SERVER=http://127.0.0.1:PORT ETCD=http://127.0.0.1:PORT NS=name conformance.sh
# Prints one line per check and "N passed, M failed"; exits non-zero if any failed.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
: "${KUBECTL:?} ${SERVER:?} ${ETCD:?} ${NS:?}"
stored() { ETCDCTL_API=3 etcdctl --endpoints "$ETCD" get "$1" --print-value-only; }

check "create namespace" k create namespace "$NS"
check "create configmap" equals "configmap/cfg created" k create configmap cfg --from-literal=a=b
check "create secret generic (stored base64)" k create secret generic pw --from-literal=password=hunter2
check "secret data is base64" equals "aHVudGVyMg==" k get secret pw -o 'jsonpath={.data.password}'
check "create service nodeport" k create service nodeport np --tcp=80:8080
check "the nodePort is allocated" bash -c "[[ \$(KUBECONFIG=/dev/null $KUBECTL --server $SERVER -n $NS get svc np -o 'jsonpath={.spec.ports[0].nodePort}') -ge 30000 ]]"
check "create deployment (stored before its controller exists)" k create deployment web --image=localhost:5000/whoami:latest
check "the deployment is defaulted" equals "1 RollingUpdate" k get deployment web -o 'jsonpath={.spec.replicas} {.spec.strategy.type}'
check "get --sort-by sorts the Table by a field of whole objects (includeObject=Object)" contains "cfg " k get configmaps --sort-by=.metadata.name --no-headers
check "a default service account exists" equals "default" k get serviceaccount default -o 'jsonpath={.metadata.name}'

# apply, then apply again with the second port changed: both ports kept, no `$` stored.
svc() { cat >"$WORK/svc.yaml" <<EOT
apiVersion: v1
kind: Service
metadata: {name: two}
spec:
  selector: {app: two}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: https, port: $1, targetPort: 8443}
EOT
}
svc 443
check "apply creates" k apply -f "$WORK/svc.yaml"
svc 8443
check "apply again updates" k apply -f "$WORK/svc.yaml"
check "both ports kept" equals "80 8443" k get svc two -o 'jsonpath={.spec.ports[*].port}'
check "no \$ key stored in etcd" bash -c "stored=\$(ETCDCTL_API=3 etcdctl --endpoints $ETCD get /registry/services/specs/$NS/two --print-value-only); [[ -n \$stored && \$stored != *'\"\$'* ]]"

# Server-side apply: create, update, a conflict with another field manager, --force-conflicts.
deploy() { cat >"$WORK/deploy.yaml" <<EOT
apiVersion: apps/v1
kind: Deployment
metadata: {name: ssa}
spec:
  replicas: $1
  selector: {matchLabels: {app: ssa}}
  template:
    metadata: {labels: {app: ssa}}
    spec: {containers: [{name: web, image: "localhost:5000/whoami:latest"}]}
EOT
}
deploy 2
check "apply --server-side creates" equals "deployment.apps/ssa serverside-applied" k apply --server-side -f "$WORK/deploy.yaml"
deploy 3
check "apply --server-side updates" equals "deployment.apps/ssa serverside-applied" k apply --server-side -f "$WORK/deploy.yaml"
check "... owned by kubectl (Apply)" equals "3 kubectl Apply" k get deploy ssa -o 'jsonpath={.spec.replicas} {.metadata.managedFields[0].manager} {.metadata.managedFields[0].operation}'
check "patch by another manager" k patch deploy ssa --type=merge -p '{"spec":{"replicas":5}}'
deploy 4
check "apply --server-side reports the conflict" bash -c "! KUBECONFIG=/dev/null $KUBECTL --server $SERVER -n $NS apply --server-side -f $WORK/deploy.yaml >$WORK/out 2>&1 && grep -q 'conflict with \"kubectl-patch\" using apps/v1: .spec.replicas' $WORK/out"
check "--force-conflicts takes the field" equals "deployment.apps/ssa serverside-applied" k apply --server-side --force-conflicts -f "$WORK/deploy.yaml"
check "... replicas as applied" equals "4" k get deploy ssa -o 'jsonpath={.spec.replicas}'

# diff and server-side dry runs change nothing.
rv=$(k get svc two -o 'jsonpath={.metadata.resourceVersion}')
svc 9443
check "diff shows the change" bash -c "KUBECONFIG=/dev/null $KUBECTL --server $SERVER --cache-dir $CACHE -n $NS diff -f $WORK/svc.yaml | grep -q 9443"
check "diff changed nothing" equals "$rv 80 8443" k get svc two -o 'jsonpath={.metadata.resourceVersion} {.spec.ports[*].port}'
check "create --dry-run=server" equals "configmap/ghost created (server dry run)" k create configmap ghost --from-literal=x=y --dry-run=server
check "... stored nothing" bash -c "! KUBECONFIG=/dev/null $KUBECTL --server $SERVER -n $NS get configmap ghost"
check "delete --dry-run=server" k delete configmap cfg --dry-run=server
check "... deleted nothing" k get configmap cfg
check "apply --dry-run=server" k apply -f "$WORK/svc.yaml" --dry-run=server
check "... changed nothing" equals "$rv" k get svc two -o 'jsonpath={.metadata.resourceVersion}'

# The three patch types.
check "patch --type=merge" k patch configmap cfg --type=merge -p '{"data":{"m":"1"}}'
check "patch --type=json" k patch configmap cfg --type=json -p '[{"op":"add","path":"/data/j","value":"2"}]'
check "patch --type=strategic adds a port" k patch svc two --type=strategic -p '{"spec":{"ports":[{"name":"extra","port":81,"targetPort":8081}]}}'
check "... the patched objects" equals "b 1 2 80 8443 81" bash -c "KUBECONFIG=/dev/null $KUBECTL --server $SERVER -n $NS get cm cfg -o 'jsonpath={.data.a} {.data.m} {.data.j}'; echo -n ' '; KUBECONFIG=/dev/null $KUBECTL --server $SERVER -n $NS get svc two -o 'jsonpath={.spec.ports[*].port}'"

# Fields the kind does not have: kubectl asks for strict validation (refused, nothing
# stored); with --validate=warn the object is created and kubectl prints the server's warning.
cat >"$WORK/typo.yaml" <<EOT
apiVersion: v1
kind: ConfigMap
metadata: {name: typo}
data: {a: b}
dataa: {c: d}
EOT
check "an unknown field is refused" bash -c "KUBECONFIG=/dev/null $KUBECTL --server $SERVER -n $NS create -f $WORK/typo.yaml 2>&1 | grep -q 'strict decoding error: unknown field \"dataa\"'"
check "... and not stored" bash -c "! KUBECONFIG=/dev/null $KUBECTL --server $SERVER -n $NS get configmap typo"
check "--validate=warn creates it with a warning" bash -c "KUBECONFIG=/dev/null $KUBECTL --server $SERVER -n $NS create --validate=warn -f $WORK/typo.yaml 2>&1 | grep -q 'Warning: unknown field \"dataa\"'"

# Events: listed, and shown by describe for the object they are about.
k run lonely --image=localhost:5000/whoami:latest --overrides='{"spec":{"nodeSelector":{"nowhere":"true"}}}' >/dev/null 2>&1
uid=$(k get pod lonely -o 'jsonpath={.metadata.uid}')
cat >"$WORK/event.yaml" <<EOT
apiVersion: v1
kind: Event
metadata: {name: lonely.1}
involvedObject: {kind: Pod, name: lonely, namespace: $NS, uid: "$uid"}
reason: Exercise
message: an event recorded by the kubectl check
type: Normal
count: 1
source: {component: conformance}
EOT
check "create an event" k create -f "$WORK/event.yaml"
check "get events lists it" bash -c "KUBECONFIG=/dev/null $KUBECTL --server $SERVER -n $NS get events | grep -q 'Exercise.*pod/lonely'"
check "describe pod shows its events" bash -c "KUBECONFIG=/dev/null $KUBECTL --server $SERVER -n $NS describe pod lonely | sed -n '/^Events:/,\$p' | grep -q Exercise"
# explain reads the OpenAPI v3 documents (schemas generated from k8s-openapi's types).
check "explain pod.spec.containers" bash -c "KUBECONFIG=/dev/null $KUBECTL --server $SERVER --cache-dir $CACHE explain pod.spec.containers | grep -q 'List of containers belonging to the pod'"
check "explain deployment.spec.replicas" bash -c "KUBECONFIG=/dev/null $KUBECTL --server $SERVER --cache-dir $CACHE explain deployment.spec.replicas | grep -q 'Number of desired pods'"
check "explain svc.spec.ports.nodePort" bash -c "KUBECONFIG=/dev/null $KUBECTL --server $SERVER --cache-dir $CACHE explain svc.spec.ports.nodePort | grep -q 'FIELD: *nodePort'"
check "explain from OpenAPI v2 (protobuf)" bash -c "KUBECONFIG=/dev/null $KUBECTL --server $SERVER --cache-dir $CACHE explain pod.spec.containers.image --output plaintext-openapiv2 | grep -q 'Container image name'"
check "auth can-i" equals "yes" k auth can-i create pods
check "delete namespace" k delete namespace "$NS" --wait=false

echo "$passed passed, $failed failed"
((failed == 0))
