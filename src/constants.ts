// Every limit and default of the node, as named constants with the unit last; relations asserted at load.
import assert from 'node:assert/strict';

export const kibBytes = 1024;
export const mibBytes = 1024 * 1024;
export const gibBytes = 1024 * 1024 * 1024;

// Block devices.
export const blockSizesAllowed: readonly number[] = [512, 4096];
export const blockSizeBytesDefault = 512;
export const diskSizeBytesDefault = gibBytes;
export const deviceBytesMax = 16 * 1024 * gibBytes;
// Each device's I/O queue (SPEC §6.6): background reads in flight at once, and how long one may
// wait under a steady foreground stream before it goes anyway. Four: a walk's current read and
// its read-ahead (checksumReadAheadClusters) run on both of the addon's SCHED_IDLE threads, so a
// lone walk on the 2-core bench machine runs at 1.2-1.4x a plain single-threaded read (0.86x with
// one in flight). Client requests are not slowed by it: while they arrive, the scheduler spaces
// checksum reads out node-wide (foregroundQuietMs, backgroundBusyStepIntervalMs), so 16 small-RPC
// clients kept 0.93x of their idle throughput with 8 verifies running, as with one in flight
// (0.90x); before that pacing existed, two in flight had cost them 0.59-0.68x (README).
export const deviceBackgroundInFlightMax = 4;
export const deviceBackgroundStarvationMs = 50;
// A request to a file that lives in memory (tmpfs, ramfs) up to this size is done at once on the
// event loop (a page-cache copy: ~1 µs at 4 KiB, ~20 µs at 256 KiB) instead of handed to another
// thread: tmpfs has no non-blocking reads, so io_uring hands every one of them to a kernel worker
// thread and back, as the thread pool does. Larger requests (cluster copies) still go that way,
// so the loop is never held long. LVNODE_MEMORY_FILE_IO=queued turns it off (src/device/fileIo.ts).
export const memoryFileInlineBytesMax = 256 * kibBytes;

// Lvstores (SPEC §2): as SPDK, a cluster is a whole number of 4 KiB metadata pages (and of the
// device's blocks), from 4 KiB to 1 GiB.
export const clusterSizeBytesDefault = 4 * mibBytes;
export const clusterPageBytes = 4 * kibBytes;
export const clusterSizeBytesMin = clusterPageBytes;
export const clusterSizeBytesMax = gibBytes;
// The metadata area at the front of an lvstore's bdev: 1/64 of the device, at least 1 MiB,
// at most 256 MiB, rounded up to whole clusters. Data clusters follow it.
export const metadataAreaBytesMin = mibBytes;
export const metadataAreaBytesMax = 256 * mibBytes;
export const metadataAreaDeviceFraction = 64;

// Names (the Longhorn fork raised SPDK's limit to 255 characters).
export const nameLengthMax = 255;
export const xattrNameLengthMax = 255;
export const xattrValueLengthMax = 64 * kibBytes;
export const xattrCountMax = 256;
export const lvolCountMax = 65_536;
// The largest lvol, in bytes (thin ones may overcommit the store up to it, as SPDK allows). Maps
// are sparse, so a thin lvol costs what it owns whatever its size; 2^63 keeps every byte offset
// inside a signed 64-bit integer, which qemu and most clients use. The data path addresses
// offsets below 2^53 (JavaScript's exact integers).
export const lvolSizeBytesMax = 2 ** 63;
// bdev_lvol_get_fragmap answers a bitmap of the range asked for: at most this many clusters (2 MiB).
export const fragmapClusterCountMax = 2 ** 24;
// bdev_lvol_get_snapshot_range_checksums answers at most this many clusters per call.
export const rangeChecksumWindowMax = 65_536;
export const bdevCountMax = 4096;

// Internal read/write API: the largest single request.
export const ioBytesMax = 64 * mibBytes;
// Payload memory of data requests in flight (node_lvol_write/read), reserved before it is
// allocated (SPEC §10): per connection and for the whole node. Beyond it a request waits.
export const payloadBytesInFlightPerConnectionMax = 128 * mibBytes;
export const payloadBytesInFlightNodeMax = 512 * mibBytes;

// Where the node keeps its files unless --data-dir or LVNODE_DATA_DIR say otherwise (SPEC §1).
export const dataDirDefault = 'data';

// JSON-RPC over WebSocket (SPEC §3.1).
export const listenDefault = '127.0.0.1:5260';
export const rpcFrameBytesMax = mibBytes;
export const rpcConnectionsMax = 1024;
export const rpcInFlightPerConnectionMax = 256;
// Received frames are held (text, then parsed params) until their replies are written: their bytes
// are budgeted per connection and for the node. Beyond that the node stops reading the socket
// (backpressure) until earlier requests finish, so 1024 connections cannot pin 256 GiB of frames.
export const rpcFrameBytesInFlightPerConnectionMax = 16 * mibBytes;
export const rpcFrameBytesInFlightNodeMax = 256 * mibBytes;
export const rpcBatchLengthMax = 256;
export const heartbeatIntervalMs = 30_000;
// A client whose send buffer grows past this is treated as falling behind.
export const clientBufferedBytesMax = 4 * mibBytes;
// On shutdown, connections get this long to finish the close handshake before they are cut.
export const rpcCloseGraceMs = 1000;

// Access to the WebSocket/HTTP endpoint (SPEC §3.1): the token the node makes on first start is
// this many random bytes (256 bits, base64url: 43 characters). A token from --token, LVNODE_TOKEN
// or the token file is at most this long, and its file is read up to a few bytes more (a newline).
export const authTokenRandomBytes = 32;
export const authTokenCharsMin = 1;
export const authTokenCharsMax = 256;
export const authTokenFileBytesMax = authTokenCharsMax + 16;
// A client that found the token in the data directory first asks the node to prove it knows it
// (an HMAC over a fresh challenge and the address the client reached) before sending it, so a
// process squatting the port never receives it. The challenge is base64url, within these lengths.
export const authChallengeCharsMin = 22;
export const authChallengeCharsMax = 128;
assert.ok(Math.ceil((authTokenRandomBytes * 4) / 3) <= authTokenCharsMax, "the node's own token fits the token limit");
assert.ok(authChallengeCharsMin <= authChallengeCharsMax);

// NBD data path (SPEC §7). The listener is off unless --nbd-listen is given; without a value it is
// this Unix socket in the data directory, mode 0600 (as SPDK's RPC socket): only the node's user
// reaches it. Every number a client controls has a bound here.
export const nbdSocketNameDefault = 'nbd.sock';
// The longest Unix socket path Linux binds (sun_path is 108 bytes with its NUL); longer paths
// would be cut or refused with a bare EINVAL, so they are refused at start with the reason.
export const unixSocketPathBytesMax = 107;
// The largest READ/WRITE payload, advertised as the maximum block size (NBD_INFO_BLOCK_SIZE):
// the protocol's interoperable 2^25.
export const nbdPayloadBytesMax = 32 * mibBytes;
// Advertised preferred block size: aligned requests of this size never need read-modify-write.
export const nbdPreferredBlockBytes = 4096;
// Payload bytes (read buffers until flushed to the socket, write buffers until written) in
// flight per NBD connection and for all NBD connections of the node; beyond either, the
// connection stops reading its socket until bytes are released.
export const nbdPayloadBytesInFlightPerConnectionMax = 64 * mibBytes;
export const nbdPayloadBytesInFlightNodeMax = 256 * mibBytes;
// Connections serving an export (each reads its socket into a 256 KiB buffer of its own).
export const nbdConnectionsMax = 256;
export const nbdInFlightPerConnectionMax = 256;
// Handshake: option data longer than this is discarded unread and refused (NBD_REP_ERR_TOO_BIG);
// a client gets this many options and this long to reach the transmission phase (TLS included).
// A real client needs a few round trips (milliseconds); the limit is what an idle connection can
// hold a slot for (qemu-nbd's --handshake-limit is 10 s).
export const nbdOptionBytesMax = 16 * kibBytes;
export const nbdHandshakeOptionsMax = 256;
export const nbdHandshakeTimeoutMs = 5000;
// Connections still in the handshake (not yet serving an export). At this many, a new connection
// first drops one that got least far (pre-option or pre-TLS, then mid-TLS), longest idle first: a
// flood of connections that never finish cannot keep a client that does from connecting. It is
// several accept batches (the listen backlog) large, so a client that is still handshaking
// survives the accepts of a few event-loop turns of a flood between its own steps. An idle
// handshake costs a socket and a few KiB (a read buffer's untouched pages are never committed).
export const nbdHandshakingConnectionsMax = 2048;
// Connections the kernel queues for the node to accept (Node's default, said explicitly).
export const nbdListenBacklog = 511;
// Connections that end in the handshake (timed out, failed TLS, dropped, refused, garbage) are
// logged as counts at most once per this interval: strangers could otherwise flood the log.
export const nbdDropLogIntervalMs = 10_000;
// TLS-PSK key file (--nbd-tls-psk, psktool's "identity:hexkey" lines as qemu-nbd and nbdkit read
// them): its size, an identity's length (OpenSSL's PSK_MAX_IDENTITY_LEN is larger), and a key's
// length (keys under 128 bits are refused; psktool makes 256-bit keys; OpenSSL takes up to 256 bytes).
export const nbdPskFileBytesMax = mibBytes;
export const nbdPskIdentityBytesMax = 128;
export const nbdPskKeyBytesMin = 16;
export const nbdPskKeyBytesMax = 256;
// NBD strings (export names, error messages) are at most 4096 bytes (proto.md).
export const nbdStringBytesMax = 4096;
// Extents in one NBD_CMD_BLOCK_STATUS reply (the protocol asks for at most 2^20).
export const nbdBlockStatusExtentsMax = 4096;
// Stopping an export: its clients' in-flight requests get this long to finish before the
// sockets are cut.
export const nbdStopGraceMs = 5000;
export const nbdExportsMax = bdevCountMax;
/**
 * bdev_set_qos_limit's ceilings: a byte limit in MiB/s, an I/O limit in I/Os a second (SPDK rounds
 * the latter up to a multiple of qosIosPerSecStep). Above them a limit would be no limit.
 */
export const qosMibPerSecMax = 1_048_576;
export const qosIosPerSecMax = 100_000_000;
export const qosIosPerSecStep = 1000;

// Inspection stream (SPEC §8): events queued per subscriber before dropping.
export const inspectQueueLengthMax = 1024;
// Checksum progress notifications are throttled to at most one per this interval per lvol.
export const progressNotifyIntervalMs = 250;
// A checksum step reads and CRCs its cluster in pieces of at most this size: large clusters (up
// to 1 GiB) then never hold the event loop for long, and the buffer stays small.
export const checksumChunkBytesMax = 4 * mibBytes;
// A walk keeps this many clusters after the one its step waits for already read (or queued at the
// device's background class), so the machine's one cluster per event never waits for a cold read.
// More than deviceBackgroundInFlightMax only queues; each is called off when the walk stops.
export const checksumReadAheadClusters = 3;
// A running walk's position is saved to the lvstore at least this often (SPEC §6.6), so a crash
// costs at most this much recomputation.
export const checksumProgressSaveIntervalMs = 5000;
// A verification keeps at most this many bad clusters (each with its expected and actual CRC) in
// the lvol's record; the count of all of them is kept too. The record is part of every checkpoint.
export const verifyBadClustersMax = 1024;

// Background scheduler (SPEC §6.6): bounds of node_set_background_options.
export const checksumConcurrencyMax = 1024;
export const checksumRateMibPerSecMax = 1_000_000;
// Foreground first (SPEC §6.6), as ZFS's scrub does (zfs_scan_idle / zfs_scrub_delay): while
// client requests arrived within the last `foregroundQuietMs`, checksum steps node-wide start at
// most one per `backgroundBusyStepIntervalMs`, because every step costs the event loop the actor's
// work on its cluster (~0.3 ms), whatever the device does.
export const foregroundQuietMs = 50;
export const backgroundBusyStepIntervalMs = 10;
// A copy waits that turn per this many bytes, not per cluster: moving a cluster costs the event
// loop far more than a checksum step (a remote destination's NVMe/TCP PDUs, here and on the far
// node), so under client load a copy runs at most ~50 MB/s whatever the cluster size (4 MiB
// clusters: 400 MB/s with a turn per cluster). bench rebuild (c), source node, small RPCs during a
// remote copy vs idle, two A/B pairs in a row: 0.90x and 0.74x (a turn per cluster: 0.41x, 0.42x).
export const copyBusyPaceUnitBytes = 512 * 1024;

assert.ok(clusterSizeBytesMin >= Math.max(...blockSizesAllowed), 'a cluster holds whole blocks');
assert.ok(metadataAreaBytesMin <= metadataAreaBytesMax);
assert.ok(checksumReadAheadClusters >= 1 && checksumReadAheadClusters <= 16, 'read-ahead keeps a walk moving without holding many clusters at once');
assert.ok(
  checksumChunkBytesMax >= clusterSizeBytesMin && (checksumChunkBytesMax & (checksumChunkBytesMax - 1)) === 0,
  'checksum pieces divide every cluster size',
);
assert.ok(rpcInFlightPerConnectionMax >= rpcBatchLengthMax, 'a full batch fits in the in-flight limit');
assert.ok(ioBytesMax <= rpcFrameBytesMax * 64);
assert.ok(rpcFrameBytesMax <= rpcFrameBytesInFlightPerConnectionMax && rpcFrameBytesInFlightPerConnectionMax <= rpcFrameBytesInFlightNodeMax);
assert.ok(ioBytesMax <= payloadBytesInFlightPerConnectionMax && payloadBytesInFlightPerConnectionMax <= payloadBytesInFlightNodeMax);
assert.ok(nbdPayloadBytesMax <= nbdPayloadBytesInFlightPerConnectionMax && nbdPayloadBytesInFlightPerConnectionMax <= nbdPayloadBytesInFlightNodeMax);
assert.ok(nbdPreferredBlockBytes >= Math.max(...blockSizesAllowed) && nbdPreferredBlockBytes <= nbdPayloadBytesMax, 'NBD block sizes are ordered');
assert.ok(nbdOptionBytesMax >= nbdStringBytesMax + 8, 'an option can carry a maximal export name');
assert.ok(nbdHandshakingConnectionsMax >= 4 * nbdListenBacklog, 'a handshaking client outlives several accept batches of a flood');
assert.ok(nbdPskKeyBytesMin <= nbdPskKeyBytesMax);

// A reply written in pieces (a long listing) holds the event loop at most this long per turn, on
// both transports (SPEC §10).
export const replySliceMs = 2;

/**
 * Copy-on-write and copy-up (inflate, decouple) move a cluster in chunks of this size through a
 * small set of buffers per lvstore, so a first write to a 1 GiB cluster does not allocate 1 GiB,
 * and 16 in flight per NBD connection cannot pin 16 of them (issue 19).
 */
export const copyChunkBytes = mibBytes;
export const copyBuffersPerLvstore = 8;
/**
 * A deep copy zero-fills a run of holes at most this many clusters per step: an lvol destination
 * journals one recorded zero CRC per cluster in one commit, and a stop is seen between steps.
 */
export const copyZeroClustersPerStepMax = 256;

// The verification policy (issue 21 item 4): bounds on what node_set_verify_policy accepts, and
// how the runner works. A snapshot's interval is at most ten years; windows at most one per hour
// of the week.
export const verifyIntervalSecMin = 60;
export const verifyIntervalSecMax = 10 * 366 * 24 * 3600;
export const verifyWindowsMax = 168;
/** Verifies the policy has started and not yet seen end; the scheduler still caps how many compute. */
export const verifyPolicyStartedMax = 64;
/** Inside a window, how often the runner looks again for snapshots that became due. */
export const verifyPolicyRescanMs = 60_000;
/** A delay longer than a timer can hold is re-armed: the runner looks again at least this often. */
export const verifyPolicyDelayMsMax = 24 * 3600 * 1000;
/** Why the policy stopped a verify at a window's end (its status `reason`; the policy resumes it). */
export const verifyWindowClosedReason = 'verify window closed';

/**
 * A policy verify that failed on a device read error is not started again for this long, doubling
 * with each failure in a row up to the policy's interval (issue 21); a result clears it.
 */
export const verifyBackoffMsMin = 60_000;

assert.ok(verifyIntervalSecMin < verifyIntervalSecMax);
assert.ok(verifyPolicyRescanMs <= verifyPolicyDelayMsMax);
assert.ok(verifyBackoffMsMin <= verifyIntervalSecMin * 1000, 'the shortest interval still caps the first back-off');

// NVMe-oF/TCP target (issue 22): SPDK's TCP transport defaults (lib/nvmf/tcp.c) where it has one.
// Listeners are created by RPC (nvmf_subsystem_add_listener); a non-loopback address needs
// --nvmf-allow-remote (README, security), as NBD over TCP needs TLS-PSK or --nbd-insecure-tcp.
export const nvmfPortDefault = 4420;
/** Submission queue entries per queue (admin and I/O): SPDK's max_queue_depth / max_aq_depth. */
export const nvmfQueueDepthMax = 128;
/** Queues per controller, the admin queue included (SPDK's max_qpairs_per_ctrlr). */
export const nvmfQueuesPerControllerMax = 128;
/** Data a command capsule may carry after its 64-byte SQE (SPDK's in_capsule_data_size). */
export const nvmfInCapsuleDataBytes = 4096;
/** Largest transfer of one command (SPDK's max_io_size); MDTS says it in 4 KiB pages. */
export const nvmfTransferBytesMax = 128 * kibBytes;
/** Largest H2CData PDU payload the host may send (ICResp MAXH2CDATA). */
export const nvmfH2cDataBytesMax = 128 * kibBytes;
/** Largest PDU accepted: a header with digest, padding and the largest data PDU with its digest. */
export const nvmfPduBytesMax = nvmfTransferBytesMax + 256;
/** TCP connections (queue pairs) of the whole target; more are closed on accept. */
export const nvmfConnectionsMax = 1024;
/** Controllers of one subsystem (SPDK's cntlid range 1..0xFFEF). */
export const nvmfControllersPerSubsystemMax = 256;
/** Namespaces of one subsystem (SPDK's max_namespaces default is 32; its maximum 1024). */
export const nvmfNamespacesMax = 1024;
export const nvmfSubsystemsMax = 1024;
export const nvmfHostsPerSubsystemMax = 1024;
export const nvmfListenersMax = 256;
// Connections before a successful Fabrics Connect (ICReq/ICResp and the Connect itself) hold a
// handshake slot: they get nvmfHandshakeTimeoutMs (NBD's 5 s; a real host needs a few round trips,
// milliseconds), and at nvmfHandshakeSlotsMax a new connection first closes the oldest handshaking
// one, so a flood of idle connections displaces itself and never the host that finishes its
// Connect promptly. The pool is several accept batches (nvmfListenBacklog, the most one event-loop
// turn accepts) large, so a host survives a few turns of flood between ICReq and Connect; it is
// smaller than nvmfConnectionsMax, so idle strangers can never take every connection.
export const nvmfHandshakeTimeoutMs = 5000;
export const nvmfHandshakeSlotsMax = 512;
/** Connections the kernel queues for the target to accept on each port. */
export const nvmfListenBacklog = 128;
// Connections that end before Connect (evicted, refused, timed out) are logged as counts at most
// once per this interval: strangers could otherwise flood the log.
export const nvmfHandshakeEndsLogIntervalMs = 10_000;
/** Keep-alive timeout when the host asks for none (SPDK's KAS is 10 x 100 ms units; hosts give theirs). */
export const nvmfKeepAliveTimeoutMsDefault = 120_000;
export const nvmfKeepAliveTimeoutMsMax = 3_600_000;
/** Asynchronous Event Requests a controller holds (SPDK's SPDK_NVMF_MAX_ASYNC_EVENTS). */
export const nvmfAsyncEventsMax = 4;
/** Payload bytes in flight for the whole target, and for one queue pair (the byte budgets). */
export const nvmfPayloadBytesInFlightNodeMax = 256 * mibBytes;
export const nvmfPayloadBytesInFlightPerQueueMax = 16 * mibBytes;
/** NQNs are at most 223 bytes (NVMe base spec). */
export const nvmfNqnBytesMax = 223;

// NVMe/TCP initiator (issue 23): bdev_nvme_attach_controller's controllers and their queues.
export const nvmeControllersMax = 256;
// Paths one controller keeps (the active one and its failover alternates): every reconnect tries
// each of them in turn, so an unbounded list would make one attempt as long as its length.
export const nvmePathsPerControllerMax = 16;
/** Entries of each queue the host creates (SQSIZE + 1); commands in flight are one fewer. */
export const nvmeInitiatorQueueEntries = 128;
/** Admin and I/O queue connections must answer ICReq and Connect within this. */
export const nvmeInitiatorConnectTimeoutMs = 10_000;
/** The controller's CC.EN → CSTS.RDY wait, at most (CAP.TO may ask for less). */
export const nvmeInitiatorReadyTimeoutMs = 10_000;
/** The keep-alive timeout the host asks for in Connect (KATO); it sends Keep Alive at half of it. */
export const nvmeInitiatorKeepAliveTimeoutMs = 10_000;
/** The largest PDU the host accepts from a controller (a C2HData of 1 MiB, its header and digests). */
export const nvmeInitiatorPduBytesMax = mibBytes + 256;
/** The largest transfer of one command, whatever MDTS says (0 = unlimited there). */
export const nvmeInitiatorTransferBytesMax = mibBytes;
/** A command (I/O, or Keep Alive's reply) not answered within this ends its connection: the controller is lost. */
export const nvmeInitiatorCommandTimeoutMs = 30_000;
/** A failed controller (ctrlr_loss_timeout_sec 0) tries to connect again this often, as SPDK's admin poller retries it. */
export const nvmeInitiatorFailedRetryMs = 1000;
/** I/O queues a controller gets when the attach does not say (SPDK's num_io_queues), and at most. */
export const nvmeInitiatorIoQueuesDefault = 2;
export const nvmeInitiatorIoQueuesMax = 16;

assert.ok(nvmfInCapsuleDataBytes <= nvmfTransferBytesMax && nvmfTransferBytesMax <= nvmfPduBytesMax);
assert.ok(nvmfTransferBytesMax % (4 * kibBytes) === 0 && Number.isInteger(Math.log2(nvmfTransferBytesMax / (4 * kibBytes))), 'MDTS is a power of two of 4 KiB pages');
assert.ok(nvmfQueueDepthMax * nvmfTransferBytesMax <= nvmfPayloadBytesInFlightPerQueueMax, 'a full queue of maximal commands fits its budget');
assert.ok(nvmfPayloadBytesInFlightPerQueueMax <= nvmfPayloadBytesInFlightNodeMax);
assert.ok(nvmfHandshakeSlotsMax >= 4 * nvmfListenBacklog && nvmfHandshakeSlotsMax < nvmfConnectionsMax, 'the handshake pool outlasts a few accept batches and leaves room for established queues');
assert.ok(nvmeInitiatorTransferBytesMax + 256 <= nvmeInitiatorPduBytesMax && nvmeInitiatorQueueEntries >= 65, 'a whole transfer fits one PDU; queue depth of at least 64');
assert.ok(nvmeInitiatorIoQueuesDefault >= 1 && nvmeInitiatorIoQueuesDefault <= nvmeInitiatorIoQueuesMax && nvmeInitiatorKeepAliveTimeoutMs / 2 < nvmeInitiatorCommandTimeoutMs);
