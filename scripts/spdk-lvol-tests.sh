#!/usr/bin/env bash
# Runs SPDK's own lvol functional tests (test/lvol/*.sh of an SPDK tree) against lvnode, driven by
# SPDK's unmodified scripts/rpc.py over `lvnode serve --rpc-socket`. Nothing is fetched and no SPDK
# code is kept here: give the tree as the first argument or in SPDK_DIR.
#
#   scripts/spdk-lvol-tests.sh /path/to/spdk                 # every test that fits
#   SPDK_DIR=/path/to/spdk scripts/spdk-lvol-tests.sh test_construct_lvs test_rename_positive
#
# Each test function runs against a fresh node (empty data directory, no default disk). Tests
# that need a kernel NBD device or fio (nbd_start_disks, run_fio_test, /dev/nbd*) are skipped
# and listed as such. The test functions come from SPDK's scripts; the few helpers SPDK's harness
# (test/common/autotest_common.sh) gives them are defined here: rpc_cmd, rpc_cmd_simple_data_json,
# NOT, killprocess, waitforlisten.
set -uo pipefail

SPDK_DIR=${1:-${SPDK_DIR:-}}
[[ $# -gt 0 ]] && shift
if [[ -z $SPDK_DIR || ! -d $SPDK_DIR/test/lvol || ! -f $SPDK_DIR/scripts/rpc.py ]]; then
	echo "usage: $0 /path/to/spdk [test_function ...]   (or SPDK_DIR=/path/to/spdk)" >&2
	exit 2
fi
for tool in node python3 jq bc; do
	command -v "$tool" > /dev/null || {
		echo "$0: needs $tool" >&2
		exit 2
	}
done
SPDK_DIR=$(readlink -f "$SPDK_DIR")
repo=$(readlink -f "$(dirname "$0")/..")
work=$(mktemp -d)
trap 'stop_node; rm -rf "$work"' EXIT
only=("$@")

# What SPDK's tests expect around them.
export rootdir=$SPDK_DIR testdir=$SPDK_DIR/test/lvol
SOCK=$work/spdk.sock
DEFAULT_RPC_ADDR=$SOCK
spdk_pid=

rpc_cmd() { python3 "$SPDK_DIR/scripts/rpc.py" -s "$SOCK" "$@"; }

# The named fields of the first element of a bdev or lvs listing, into the array jq_out.
rpc_cmd_simple_data_json() {
	local kind=$1 field json
	shift
	local -a fields
	if [[ $kind == lvs ]]; then
		fields=(uuid name base_bdev total_data_clusters free_clusters block_size cluster_size)
	else
		fields=(name "aliases[0]" block_size num_blocks uuid product_name supported_io_types.read supported_io_types.write
			driver_specific.lvol.clone driver_specific.lvol.base_snapshot driver_specific.lvol.esnap_clone
			driver_specific.lvol.external_snapshot_name)
	fi
	json=$(rpc_cmd "$@") || return 1
	declare -gA jq_out=()
	for field in "${fields[@]}"; do jq_out[$field]=$(jq -r ".[0].$field" <<< "$json"); done
}

NOT() { ! "$@"; }
xtrace_disable() { :; }
xtrace_restore() { :; }
killprocess() {
	kill "$1" 2> /dev/null || return 0
	# Not always our child (a test's subshell calls it too): wait by polling.
	local attempt
	for attempt in $(seq 200); do
		kill -0 "$1" 2> /dev/null || break
		sleep 0.05
	done
	spdk_pid=
}
waitforlisten() {
	local attempt
	for attempt in $(seq 200); do
		[[ -S $SOCK ]] && rpc_cmd rpc_get_methods > /dev/null 2>&1 && return 0
		kill -0 "$1" 2> /dev/null || return 1
		sleep 0.05
	done
	return 1
}

# Some tests restart the target themselves ($SPDK_BIN_DIR/spdk_tgt &): a fresh lvnode on the same
# socket, with nothing saved from before (spdk_tgt keeps no configuration either).
mkdir -p "$work/bin"
cat > "$work/bin/spdk_tgt" << TARGET
#!/usr/bin/env bash
exec node "$repo/bin/lvnode.mjs" serve --data-dir "\$(mktemp -d "$work/restart.XXXXXX")" --listen 127.0.0.1:0 \\
	--rpc-socket "$SOCK" --default-disk-size 0 >> "$work/node.log" 2>&1
TARGET
chmod +x "$work/bin/spdk_tgt"
export SPDK_BIN_DIR=$work/bin

start_node() {
	rm -rf "$work/data" "$SOCK"
	node "$repo/bin/lvnode.mjs" serve --data-dir "$work/data" --listen 127.0.0.1:0 --rpc-socket "$SOCK" \
		--default-disk-size 0 > "$work/node.log" 2>&1 &
	spdk_pid=$!
	waitforlisten "$spdk_pid"
}
stop_node() {
	[[ -n $spdk_pid ]] && killprocess "$spdk_pid"
	# And any node a test started itself.
	pkill -f -- "--rpc-socket $SOCK" 2> /dev/null
	sleep 0.1
}

passed=() failed=() skipped=()
scripts=(basic rename resize snapshot_clone thin_provisioning tasting external_snapshot external_copy hotremove xattr)
for script in "${scripts[@]}"; do
	file=$SPDK_DIR/test/lvol/$script.sh
	[[ -f $file ]] || continue
	# The test functions, then the order run_test gives them in.
	mapfile -t tests < <(sed -n 's/^run_test "\([^"]*\)" \([A-Za-z_0-9]*\).*/\1 \2/p' "$file")
	for entry in "${tests[@]}"; do
		name=${entry% *} fn=${entry#* }
		label=$name
		[[ $fn != "$name" ]] && label="$name ($fn)"
		if ((${#only[@]})) && [[ ! " ${only[*]} " == *" $name "* ]]; then continue; fi
		body=$(
			source "$SPDK_DIR/test/lvol/common.sh"
			source <(sed -n '/^function [A-Za-z_0-9]*() {/,/^}/p' "$file")
			declare -f "$fn"
		)
		if grep -Eq 'nbd_start_disks|run_fio_test|/dev/nbd|fio_' <<< "$body"; then
			skipped+=("$script/$label (kernel NBD or fio)")
			continue
		fi
		if ! start_node; then
			failed+=("$script/$label (the node did not start; $work/node.log)")
			continue
		fi
		(
			# As SPDK's harness runs them: errexit, unset variables allowed.
			set +u -e
			source "$SPDK_DIR/test/lvol/common.sh"
			source <(sed -n '/^function [A-Za-z_0-9]*() {/,/^}/p' "$file")
			# The aio files some scripts make before their tests (tasting.sh), made here for each test.
			truncate -s "${AIO_SIZE_MB}M" "$testdir/aio_bdev_0" "$testdir/aio_bdev_1"
			[[ -n ${LVNODE_SPDK_TRACE:-} ]] && set -x
			"$fn"
		) > "$work/$name.log" 2>&1
		status=$?
		if ((status == 0)); then
			passed+=("$script/$label")
		else
			failed+=("$script/$label")
			echo "---- $script/$label failed; its last lines:" >&2
			tail -n 15 "$work/$name.log" >&2
		fi
		stop_node
		rm -f "$SPDK_DIR/test/lvol/aio_bdev_0" "$SPDK_DIR/test/lvol/aio_bdev_1"
	done
done

echo
echo "SPDK lvol tests against lvnode ($(git -C "$SPDK_DIR" rev-parse --short HEAD 2> /dev/null || echo "tree $SPDK_DIR")):"
echo "passed ${#passed[@]}, failed ${#failed[@]}, skipped ${#skipped[@]}"
for test in "${passed[@]}"; do echo "  pass  $test"; done
for test in "${failed[@]}"; do echo "  FAIL  $test"; done
for test in "${skipped[@]}"; do echo "  skip  $test"; done
((${#failed[@]} == 0))
