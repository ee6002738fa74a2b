#!/bin/sh
# A lab node: what kind's node entrypoint does, reduced. Enter a cgroup namespace of our
# own, make /sys and the cgroup hierarchies writable (nested runc must create cgroups),
# start containerd (and keep it running), wait for its socket, then keep the agent running
# (restarted if it exits or is killed, so `pkill agent` shows that restarting the kubelet
# is harmless).
set -eu
if [ -z "${OWNKUBE_IN_CGROUPNS:-}" ]; then
  export OWNKUBE_IN_CGROUPNS=1
  exec unshare --cgroup "$0" "$@"
fi
# Docker mounts these read-only per mount; a bind remount clears that flag (a plain
# remount would try to change the shared cgroup superblock and fail as "busy").
for m in /sys /proc/sys /sys/fs/cgroup /sys/fs/cgroup/*; do
  [ -d "$m" ] || continue
  mount -o remount,bind,rw "$m" 2>/dev/null || mount -o remount,rw "$m" 2>/dev/null || true
done
mkdir -p /var/run/netns /var/lib/ownkube /var/log/ownkube
# A machine ID of its own per node (systemd would write one at first boot): the agent
# reports it as the Node's status.nodeInfo.machineID.
[ -s /etc/machine-id ] || tr -d - </proc/sys/kernel/random/uuid >/etc/machine-id
sysctl -q -w net.ipv4.ip_forward=1 net.ipv4.conf.all.route_localnet=1 || true
sysctl -q -w net.bridge.bridge-nf-call-iptables=1 2>/dev/null || true

# containerd, restarted if it exits or is killed (its containers run on under their shims:
# restarting it stops no pod, which scripts/chaos checks).
( while true; do
    containerd >>/var/log/ownkube/containerd.log 2>&1 || true
    echo "$(date -Is) containerd exited; starting it again" >>/var/log/ownkube/containerd.log
    sleep 1
  done ) &
i=0
until [ -S /run/containerd/containerd.sock ]; do
  i=$((i + 1)); [ $i -gt 300 ] && { echo "containerd did not start" >&2; cat /var/log/ownkube/containerd.log >&2; exit 1; }
  sleep 0.1
done

# The agent, with its flags; a mode in /var/lib/ownkube/proxy-mode (written by
# `scripts/lab proxy-mode NODE MODE`, like editing kube-proxy's configuration file)
# replaces the --proxy-mode flag's value at each start.
agent_with_mode() {
  mode=$(cat /var/lib/ownkube/proxy-mode 2>/dev/null || true)
  n=$# next=
  for a in "$@"; do
    if [ -n "$next" ]; then a=$mode next=; fi
    if [ "$a" = --proxy-mode ] && [ -n "$mode" ]; then next=1; fi
    set -- "$@" "$a"
  done
  shift "$n"
  exec agent "$@"
}

trap 'kill $(jobs -p) 2>/dev/null; exit 0' TERM INT
while true; do
  ( agent_with_mode "$@" ) >>/var/log/ownkube/agent.log 2>&1 &
  wait $! || true
  echo "$(date -Is) agent exited; starting it again" >>/var/log/ownkube/agent.log
  sleep 1
done
