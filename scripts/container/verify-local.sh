#!/usr/bin/env bash
# Builds the server's container image with the .NET SDK (dotnet publish -t:PublishContainer, no Dockerfile) on a
# machine that cannot reach Microsoft's image registry, and checks that the image serves requests:
#   1. starts a throwaway registry (CNCF distribution, Debian package docker-registry) on 127.0.0.1;
#   2. builds a stand-in for the ASP.NET Core runtime base image (Debian 12 minbase + ICU/OpenSSL/CA certificates/tzdata,
#      the .NET and ASP.NET Core shared frameworks of the local SDK, an `app` user with UID 1654, the official images'
#      environment), in three layers, and pushes it as localhost:PORT/dotnet/aspnet:10.0;
#   3. publishes samples/ShareGPT4V.Server as an image on top of it, pushed to the same registry;
#   4. pulls the image back, applies its layers in order to an empty root filesystem, and runs the image's
#      Entrypoint/Cmd with its Env, WorkingDir and User under chroot, with /proc and /dev bound in and a model folder
#      mounted read-only at /models/NAME; waits for GET /health, sends one chat completion and checks usage;
#   5. stops the server, unmounts everything it mounted, stops the registry (also on failure), prints a summary.
#
#   sudo scripts/container/verify-local.sh [WORK_DIR] [OUT_DIR]
#
# WORK_DIR (default /tmp/sharegpt4v-container) holds the registry's storage, the base root filesystem and the unpacked
# image; OUT_DIR (default WORK_DIR/out) the logs, the image's manifest/config and summary.txt. Rerunning reuses the
# base image already in WORK_DIR's registry (REBUILD_BASE=1 rebuilds it). Environment: MODEL (default the repository's
# tiny random-weight fixture tests/ShareGPT4V.Tests/Fixtures/oracle/hf_llama2vocab), REGISTRY_PORT (5000),
# HTTP_PORT (8080, the port the base image's ASPNETCORE_HTTP_PORTS names), DEBIAN_MIRROR (default: the first Debian
# mirror in the apt sources), TAG (0.1.0).
# Needs root (debootstrap, mount, chroot) and: apt-get install docker-registry skopeo umoci debootstrap jq curl
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=${1:-/tmp/sharegpt4v-container}
out=${2:-$work/out}
model=${MODEL:-$root/tests/ShareGPT4V.Tests/Fixtures/oracle/hf_llama2vocab}
rport=${REGISTRY_PORT:-5000}
hport=${HTTP_PORT:-8080}
tag=${TAG:-0.1.0}
registry=localhost:$rport
base_ref=$registry/dotnet/aspnet:10.0
app_ref=$registry/sharegpt4v-server:$tag
model_name=$(basename "$model")

log() { printf '[%s] %s\n' "$(date -u +%T)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }
trap 'log "FAILED (line $LINENO): $BASH_COMMAND"' ERR

[ "$(id -u)" = 0 ] || die "run as root (debootstrap, mount and chroot need it)"
for tool in docker-registry skopeo umoci debootstrap jq curl chroot findmnt readelf dotnet; do
  command -v "$tool" >/dev/null || die "$tool is missing (apt-get install docker-registry skopeo umoci debootstrap jq curl binutils)"
done
[ -f "$model/config.json" ] || die "no model folder at $model"
chroot_bin=$(command -v chroot)
mkdir -p "$work" "$out"
work=$(cd "$work" && pwd)
out=$(cd "$out" && pwd)

# Everything this script mounts lies under $work; unmount deepest first. Nothing under $work is deleted while mounted.
unmount_all() {
  local m
  findmnt -rn -o TARGET | awk -v w="$work/" 'index($0, w) == 1' | sort -r | while read -r m; do
    umount "$m" || umount -l "$m"
  done
  ! findmnt -rn -o TARGET | awk -v w="$work/" 'index($0, w) == 1' | grep -q .
}
safe_rm() { # remove a directory under $work, never across a mount
  unmount_all || die "mounts remain under $work; not deleting anything"
  rm -rf --one-file-system "$@"
}

registry_pid= server_pid=
cleanup() {
  local rc=$?
  set +e
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then kill "$server_pid"; wait "$server_pid" 2>/dev/null; fi
  unmount_all || log "some mounts under $work could not be removed"
  if [ -n "$registry_pid" ] && kill -0 "$registry_pid" 2>/dev/null; then kill "$registry_pid"; wait "$registry_pid" 2>/dev/null; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
unmount_all || die "stale mounts under $work could not be removed"

# --- 1. registry -------------------------------------------------------------------------------------------------
if curl -s -o /dev/null "http://127.0.0.1:$rport/v2/"; then die "something already listens on 127.0.0.1:$rport"; fi
if curl -s -o /dev/null "http://127.0.0.1:$hport/"; then die "something already listens on port $hport"; fi
mkdir -p "$work/registry/data"
cat > "$work/registry/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/registry/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$rport
EOF
docker-registry serve "$work/registry/config.yml" > "$out/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 1 50); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$rport/v2/")" = 200 ] && break
  kill -0 "$registry_pid" 2>/dev/null || die "the registry exited; see $out/registry.log"
  sleep 0.2
done
log "registry up on 127.0.0.1:$rport (storage $work/registry/data)"

# --- 2. stand-in base image --------------------------------------------------------------------------------------
debian_mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  { grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources || true
    grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | sed 's/\[[^]]*\]//' || true
  } | awk '{print $2}' | grep -E '/debian/?$' | head -1 || true
}
build_base() {
  local dn fw asp rootfs=$work/base/debootstrap oci=$work/base/oci bundle=$work/base/bundle mirror
  dn=$(dirname "$(readlink -f "$(command -v dotnet)")")
  fw=$(ls "$dn/shared/Microsoft.NETCore.App" | grep '^10\.' | sort -V | tail -1)
  asp=$(ls "$dn/shared/Microsoft.AspNetCore.App" | grep '^10\.' | sort -V | tail -1)
  [ -n "$fw" ] && [ -n "$asp" ] || die "no 10.x shared frameworks next to $dn/dotnet"
  if [ ! -e "$work/base/debootstrap.done" ]; then
    mirror=$(debian_mirror)
    [ -n "$mirror" ] || die "no Debian mirror in the apt sources; set DEBIAN_MIRROR"
    safe_rm "$rootfs"
    log "debootstrap bookworm (minbase) from $mirror"
    debootstrap --variant=minbase --include=ca-certificates,libicu72,libssl3,tzdata bookworm "$rootfs" "$mirror" \
      > "$out/debootstrap.log" 2>&1 || die "debootstrap failed; see $out/debootstrap.log"
    # The official images' non-root user (APP_UID=1654).
    "$chroot_bin" "$rootfs" groupadd --gid 1654 app
    "$chroot_bin" "$rootfs" useradd --no-log-init --uid 1654 --gid 1654 --create-home app
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/* \
      "$rootfs"/var/log/* "$rootfs"/etc/resolv.conf "$rootfs"/etc/hostname
    touch "$work/base/debootstrap.done"
  fi
  safe_rm "$oci" "$bundle"
  umoci init --layout "$oci"
  umoci new --image "$oci:aspnet"
  umoci unpack --image "$oci:aspnet" "$bundle" > /dev/null
  log "layer 1: Debian 12 root filesystem"
  cp -a "$rootfs/." "$bundle/rootfs/"
  umoci repack --refresh-bundle --history.created_by "debootstrap --variant=minbase bookworm + app user" --image "$oci:aspnet" "$bundle"
  log "layer 2: .NET runtime $fw"
  mkdir -p "$bundle/rootfs/usr/share/dotnet/shared"
  cp -a "$dn/dotnet" "$dn/host" "$bundle/rootfs/usr/share/dotnet/"
  cp -a "$dn"/LICENSE.txt "$dn"/ThirdPartyNotices.txt "$bundle/rootfs/usr/share/dotnet/" 2>/dev/null || true
  mkdir -p "$bundle/rootfs/usr/share/dotnet/shared/Microsoft.NETCore.App"
  cp -a "$dn/shared/Microsoft.NETCore.App/$fw" "$bundle/rootfs/usr/share/dotnet/shared/Microsoft.NETCore.App/"
  ln -sf /usr/share/dotnet/dotnet "$bundle/rootfs/usr/bin/dotnet"
  umoci repack --refresh-bundle --history.created_by "Microsoft.NETCore.App $fw" --image "$oci:aspnet" "$bundle"
  log "layer 3: ASP.NET Core runtime $asp"
  mkdir -p "$bundle/rootfs/usr/share/dotnet/shared/Microsoft.AspNetCore.App"
  cp -a "$dn/shared/Microsoft.AspNetCore.App/$asp" "$bundle/rootfs/usr/share/dotnet/shared/Microsoft.AspNetCore.App/"
  umoci repack --history.created_by "Microsoft.AspNetCore.App $asp" --image "$oci:aspnet" "$bundle"
  umoci config --image "$oci:aspnet" --no-history --clear=config.env \
    --config.env=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.env=APP_UID=1654 --config.env=ASPNETCORE_HTTP_PORTS=8080 --config.env=DOTNET_RUNNING_IN_CONTAINER=true \
    --config.env=DOTNET_VERSION="$fw" --config.env=ASPNET_VERSION="$asp"
  umoci gc --layout "$oci"
  skopeo copy -q --format v2s2 --dest-tls-verify=false "oci:$oci:aspnet" "docker://$base_ref"
  safe_rm "$bundle"
}
if [ "${REBUILD_BASE:-0}" = 1 ] || ! skopeo inspect --tls-verify=false "docker://$base_ref" > /dev/null 2>&1; then
  t0=$(date +%s)
  build_base
  log "base image $base_ref pushed ($(( $(date +%s) - t0 )) s)"
else
  log "base image $base_ref already in the registry (REBUILD_BASE=1 rebuilds it)"
fi
skopeo inspect --tls-verify=false --config "docker://$base_ref" > "$out/base-config.json"

# --- 3. the SDK builds the server image --------------------------------------------------------------------------
log "dotnet publish -t:PublishContainer on top of $base_ref"
# A fresh publish folder outside the repository: the image's files are then the ones this publish copied (and patched).
safe_rm "$work/publish"
t0=$(date +%s)
(cd "$root" && dotnet publish samples/ShareGPT4V.Server -c Release --os linux --arch x64 -t:PublishContainer -nologo -v:n \
  -p:PublishDir="$work/publish/" -p:ContainerBaseImage="$base_ref" -p:ContainerRegistry="$registry" \
  -p:ContainerRepository=sharegpt4v-server -p:ContainerImageTags="$tag") > "$out/publish.log" 2>&1 \
  || { tail -30 "$out/publish.log" >&2; die "publish failed; see $out/publish.log"; }
publish_s=$(( $(date +%s) - t0 ))
grep -E "ShareGPT4V: |Building image|Pushed image|error|warning CONTAINER" "$out/publish.log" | sed 's/^ */  sdk: /' >&2 || true
grep -q "ShareGPT4V: marked GLIBCXX_3.4.32 weak in $work/publish/" "$out/publish.log" \
  || die "the publish step did not patch libLibTorchSharp.so in the publish folder; see $out/publish.log"

# --- 4. pull it back, apply its layers in order ------------------------------------------------------------------
oci=$work/app/oci rootfs=$work/app/rootfs
safe_rm "$work/app"
mkdir -p "$work/app"
skopeo copy -q --src-tls-verify=false "docker://$app_ref" "oci:$oci:$tag"
skopeo inspect --tls-verify=false --raw "docker://$app_ref" | jq . > "$out/manifest.json"
manifest_digest=$(jq -r --arg t "$tag" '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t) | .digest' "$oci/index.json")
blob() { echo "$oci/blobs/${1%%:*}/${1#*:}"; }
jq . "$(blob "$(jq -r .config.digest "$(blob "$manifest_digest")")")" > "$out/image-config.json"
mkdir -p "$rootfs"
layers=0
for d in $(jq -r '.layers[].digest' "$(blob "$manifest_digest")"); do
  f=$(blob "$d")
  # Whiteouts: .wh.NAME deletes NAME from lower layers, .wh..wh..opq empties its directory.
  mapfile -t whiteouts < <(tar -tf "$f" | grep -E '(^|/)\.wh\.' || true)
  for w in "${whiteouts[@]}"; do
    dir=$(dirname "$w") name=$(basename "$w")
    if [ "$name" = .wh..wh..opq ]; then find "$rootfs/$dir" -mindepth 1 -maxdepth 1 -exec rm -rf --one-file-system {} +
    else rm -rf --one-file-system "${rootfs:?}/$dir/${name#.wh.}"; fi
  done
  tar -xf "$f" -C "$rootfs" --numeric-owner --same-permissions
  for w in "${whiteouts[@]}"; do rm -f "${rootfs:?}/$w"; done
  layers=$((layers + 1))
done
log "applied $layers layers to $rootfs"

# The published TorchSharp native library must carry the GLIBCXX_3.4.32 weakening (Debian 12's libstdc++ lacks it).
lib=$(find "$rootfs/app" -name libLibTorchSharp.so | head -1)
[ -n "$lib" ] || die "no libLibTorchSharp.so in the image's /app"
patch_flags=$(readelf -V "$lib" | grep -o 'Name: GLIBCXX_3.4.32 *Flags: [A-Z]*' | awk '{print $NF}')
[ "$patch_flags" = WEAK ] || die "${lib#$rootfs} needs GLIBCXX_3.4.32 without the weak flag (flags: ${patch_flags:-?})"

# --- 5. run the image's command under chroot ---------------------------------------------------------------------
cfg=$out/image-config.json
mapfile -t entrypoint < <(jq -r '.config.Entrypoint // [] | .[]' "$cfg")
mapfile -t cmd < <(jq -r '.config.Cmd // [] | .[]' "$cfg")
mapfile -t image_env < <(jq -r '.config.Env // [] | .[]' "$cfg")
workdir=$(jq -r '.config.WorkingDir // "/" | if . == "" then "/" else . end' "$cfg")
user=$(jq -r '.config.User // ""' "$cfg")
[ ${#entrypoint[@]} -gt 0 ] || [ ${#cmd[@]} -gt 0 ] || die "the image has neither Entrypoint nor Cmd"
# User: NAME, UID, NAME:GROUP or UID:GID, resolved in the image's /etc/passwd and /etc/group.
u=${user%%:*} g=; [[ $user == *:* ]] && g=${user#*:}
[ -n "$u" ] || u=0
pw=$(awk -F: -v u="$u" '$1 == u || $3 == u' "$rootfs/etc/passwd" | head -1)
uid=$u; [[ $u =~ ^[0-9]+$ ]] || uid=$(echo "$pw" | cut -d: -f3)
[ -n "$uid" ] || die "user $u is not in the image's /etc/passwd"
if [ -z "$g" ]; then gid=$(echo "$pw" | cut -d: -f4); gid=${gid:-$uid}
elif [[ $g =~ ^[0-9]+$ ]]; then gid=$g
else gid=$(awk -F: -v g="$g" '$1 == g {print $3}' "$rootfs/etc/group"); fi
home=$(echo "$pw" | cut -d: -f6)
# Like container runtimes: HOME from the user's passwd entry unless the image sets it.
printf '%s\n' "${image_env[@]}" | grep -q '^HOME=' || image_env+=("HOME=${home:-/}")

mount --bind /proc "$rootfs/proc"
mount --bind /dev "$rootfs/dev"
mkdir -p "$rootfs/models/$model_name"
mount --bind "$model" "$rootfs/models/$model_name"
mount -o remount,bind,ro "$rootfs/models/$model_name"
[ "$hport" = 8080 ] || image_env+=("ASPNETCORE_HTTP_PORTS=$hport")
log "running as $uid:$gid in $workdir: $(printf '%s ' "${entrypoint[@]}" "${cmd[@]}")--model /models/$model_name"
t0=$(date +%s.%N)
env -i "${image_env[@]}" "$chroot_bin" --userspec="$uid:$gid" --groups="$gid" "$rootfs" \
  /usr/bin/env -C "$workdir" "${entrypoint[@]}" "${cmd[@]}" --model "/models/$model_name" > "$out/server.log" 2>&1 &
server_pid=$!
healthy=
for _ in $(seq 1 1200); do
  if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$hport/health")" = 200 ]; then healthy=1; break; fi
  kill -0 "$server_pid" 2>/dev/null || { tail -20 "$out/server.log" >&2; die "the server exited; see $out/server.log"; }
  sleep 0.25
done
[ -n "$healthy" ] || die "no healthy server after 300 s; see $out/server.log"
healthy_s=$(awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN {printf "%.1f", a - b}')
curl -s "http://127.0.0.1:$hport/health" > "$out/health.json"
curl -sS --max-time 120 -H 'Content-Type: application/json' "http://127.0.0.1:$hport/v1/chat/completions" \
  -d "{\"model\":\"$model_name\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":3,\"temperature\":0}" \
  > "$out/chat.json"
jq -e '.usage.completion_tokens == 3' "$out/chat.json" > /dev/null || die "unexpected answer: $(cat "$out/chat.json")"
server_user=$(ps -o user= -p "$server_pid" 2>/dev/null | tr -d ' ')
kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=
unmount_all || die "mounts remain under $work"

# --- summary -----------------------------------------------------------------------------------------------------
layer_sizes=$(jq '[.layers[].size] | add' "$out/manifest.json")
app_layer=$(jq '.layers[-1].size' "$out/manifest.json")
mib() { awk -v b="$1" 'BEGIN {printf "%.0f MiB", b / 1048576}'; }
{
  echo "base image:    $base_ref ($(jq -r '.rootfs.diff_ids | length' "$out/base-config.json") layers; Env $(jq -c '.config.Env' "$out/base-config.json"))"
  echo "app image:     $app_ref, $(jq '.layers | length' "$out/manifest.json") layers, $(mib "$layer_sizes") compressed (app layer $(mib "$app_layer")), $(du -sm --apparent-size "$rootfs" | cut -f1) MiB unpacked"
  echo "image config:  Entrypoint $(jq -c '.config.Entrypoint' "$cfg"), Cmd $(jq -c '.config.Cmd' "$cfg"), WorkingDir $workdir, User '${user}', ports $(jq -c '.config.ExposedPorts | keys' "$cfg")"
  echo "publish:       ${publish_s} s (dotnet publish -t:PublishContainer, incl. build)"
  echo "native patch:  ${lib#$rootfs}: GLIBCXX_3.4.32 Flags: $patch_flags"
  echo "run:           chroot as $uid:$gid (ps: ${server_user:-?}), healthy after ${healthy_s} s on port $hport"
  echo "chat:          usage $(jq -c .usage "$out/chat.json"), finish_reason $(jq -r '.choices[0].finish_reason' "$out/chat.json")"
  echo "mounts left:   $(findmnt -rn -o TARGET | awk -v w="$work/" 'index($0, w) == 1' | wc -l)"
} | tee "$out/summary.txt"
log "OK (logs in $out)"
