// The dashboard shell: connects to the node (asking for the token when it needs one), keeps the
// storage listing live from notifications, and switches between Volumes, Inspector and Node.
import { useCallback, useEffect, useRef, useState } from 'preact/hooks';
import { fetchPageConfig, takeTokenFromUrl, tokenStorageKey } from './connection.ts';
import { InspectorView } from './inspector.tsx';
import { NodePanel } from './nodePanel.tsx';
import { DashboardRpc, RpcCallError, socketUrl } from './rpc.ts';
import { mergeChecksum, needsValue } from './tree.ts';
import type { BdevInfo, ChecksumRow, LvolInfo, LvstoreInfo, UnloadedLvstore } from './types.ts';
import { VolumesView } from './volumes.tsx';

type Tab = 'volumes' | 'inspector' | 'node';

type Connection =
  | { state: 'starting' }
  | { state: 'needs-token'; error: string | null }
  | { state: 'connecting' }
  | { state: 'open'; rpc: DashboardRpc }
  | { state: 'closed'; error: string };

export interface Listing {
  bdevs: BdevInfo[];
  lvstores: LvstoreInfo[];
  lvols: LvolInfo[];
  checksums: Map<string, ChecksumRow>;
  unloaded: UnloadedLvstore[];
  loadedAtMs: number;
}

const emptyListing: Listing = { bdevs: [], lvstores: [], lvols: [], checksums: new Map(), unloaded: [], loadedAtMs: 0 };
const refreshDebounceMs = 120;
// Writes change allocated clusters all the time: their counts refresh at most once a second.
const allocationRefreshMs = 1000;
const reconnectMs = 2000;

/** #volumes, #node, #inspect or #inspect/<actor id>. */
function routeOf(hash: string): { tab: Tab; actorId: string | null } {
  const match = /^#inspect(?:\/(.+))?$/.exec(hash);
  if (match) return { tab: 'inspector', actorId: match[1] ? decodeURIComponent(match[1]) : null };
  return { tab: hash === '#node' ? 'node' : 'volumes', actorId: null };
}

function errorText(error: unknown): string {
  if (error instanceof RpcCallError) return error.text;
  return error instanceof Error ? error.message : String(error);
}

export function App() {
  const [connection, setConnection] = useState<Connection>({ state: 'starting' });
  const [tab, setTab] = useState<Tab>(() => routeOf(location.hash).tab);
  const [inspected, setInspected] = useState<string | null>(() => routeOf(location.hash).actorId);
  // Links such as #inspect/<uuid> work from the address bar and from bookmarks.
  useEffect(() => {
    const onHash = () => {
      const route = routeOf(location.hash);
      setTab(route.tab);
      if (route.actorId !== null) setInspected(route.actorId);
    };
    addEventListener('hashchange', onHash);
    return () => removeEventListener('hashchange', onHash);
  }, []);
  const tokenRequired = useRef(false);

  const connect = useCallback(async () => {
    const token = sessionStorage.getItem(tokenStorageKey);
    if (tokenRequired.current && !token) {
      setConnection({ state: 'needs-token', error: null });
      return;
    }
    setConnection({ state: 'connecting' });
    try {
      const rpc = await DashboardRpc.connect(socketUrl(location, token));
      rpc.onClose(() => {
        setConnection({ state: 'closed', error: 'connection to the node closed; reconnecting…' });
        setTimeout(() => void connect(), reconnectMs);
      });
      setConnection({ state: 'open', rpc });
    } catch (error) {
      if (tokenRequired.current) {
        sessionStorage.removeItem(tokenStorageKey);
        setConnection({ state: 'needs-token', error: token ? 'the node refused this token' : null });
      } else {
        setConnection({ state: 'closed', error: `${errorText(error)}; retrying…` });
        setTimeout(() => void connect(), reconnectMs);
      }
    }
  }, []);

  useEffect(() => {
    const { token, cleanedHref } = takeTokenFromUrl(location.href);
    if (token !== null) {
      sessionStorage.setItem(tokenStorageKey, token);
      history.replaceState(null, '', cleanedHref);
    }
    void fetchPageConfig().then((config) => {
      tokenRequired.current = config.token_required;
      void connect();
    });
  }, [connect]);

  const openTab = (next: Tab, actorId?: string) => {
    setTab(next);
    if (actorId !== undefined) setInspected(actorId);
    const hash = next === 'inspector' ? `#inspect${actorId ?? inspected ? `/${encodeURIComponent(actorId ?? inspected!)}` : ''}` : next === 'node' ? '#node' : '#volumes';
    history.replaceState(null, '', hash);
  };

  if (connection.state === 'needs-token') {
    return (
      <TokenForm
        error={connection.error}
        onToken={(token) => {
          sessionStorage.setItem(tokenStorageKey, token);
          void connect();
        }}
      />
    );
  }
  const rpc = connection.state === 'open' ? connection.rpc : null;
  return (
    <div class="shell">
      <header>
        <h1>lvnode</h1>
        <nav aria-label="views">
          {(['volumes', 'inspector', 'node'] as const).map((name) => (
            <button type="button" class={tab === name ? 'tab current' : 'tab'} aria-current={tab === name ? 'page' : undefined} onClick={() => openTab(name)}>
              {name === 'volumes' ? 'Volumes' : name === 'inspector' ? 'Inspector' : 'Node'}
            </button>
          ))}
        </nav>
        <span class={`link ${connection.state}`} role="status">
          {connection.state === 'open' ? 'connected' : connection.state === 'closed' ? connection.error : 'connecting…'}
        </span>
      </header>
      <main>
        {rpc ? (
          tab === 'volumes' ? (
            <Volumes rpc={rpc} onInspect={(id) => openTab('inspector', id)} />
          ) : tab === 'inspector' ? (
            <InspectorView rpc={rpc} actorId={inspected} onPick={(id) => openTab('inspector', id)} />
          ) : (
            <NodePanel rpc={rpc} />
          )
        ) : (
          <p class="boot">Waiting for the node…</p>
        )}
      </main>
    </div>
  );
}

function TokenForm({ error, onToken }: { error: string | null; onToken: (token: string) => void }) {
  const [value, setValue] = useState('');
  return (
    <form
      class="token"
      onSubmit={(event) => {
        event.preventDefault();
        if (value.trim()) onToken(value.trim());
      }}
    >
      <h1>lvnode</h1>
      <p>
        This node wants its access token. Open the link <code>lvnode serve</code> printed at start (it carries the token), or enter
        the token from the node's <code>lvnode.token</code> file or its <code>--token</code>.
      </p>
      <label>
        Token <input type="password" name="token" autoComplete="off" value={value} onInput={(event) => setValue((event.target as HTMLInputElement).value)} />
      </label>
      <button type="submit">Connect</button>
      {error ? <p class="error" role="alert">{error}</p> : null}
    </form>
  );
}

/** The live listing: loaded once, then refreshed (debounced) when a notification says it changed. */
function useListing(rpc: DashboardRpc): { listing: Listing; error: string | null } {
  const [listing, setListing] = useState<Listing>(emptyListing);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    let disposed = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    let running = false;
    let again = false;
    const fetchValue = (uuid: string) => {
      rpc.call<{ checksum: bigint | number }>('bdev_lvol_get_snapshot_checksum', { name: uuid }).then(
        ({ checksum }) => setListing((current) => ({ ...current, checksums: mergeChecksum(current.checksums, { ...current.checksums.get(uuid)!, checksum }) })),
        () => undefined,
      );
    };
    const load = async () => {
      if (running) {
        again = true;
        return;
      }
      running = true;
      try {
        const [bdevs, lvstores, lvols, checksumRows, unloaded] = await Promise.all([
          rpc.call<BdevInfo[]>('bdev_get_bdevs'),
          rpc.call<LvstoreInfo[]>('bdev_lvol_get_lvstores'),
          rpc.call<LvolInfo[]>('bdev_lvol_get_lvols'),
          rpc.call<ChecksumRow[]>('node_get_checksums'),
          rpc.call<UnloadedLvstore[]>('node_get_unloaded_lvstores'),
        ]);
        if (disposed) return;
        setListing({ bdevs, lvstores, lvols, checksums: new Map(checksumRows.map((row) => [row.uuid, row])), unloaded, loadedAtMs: Date.now() });
        setError(null);
      } catch (caught) {
        if (!disposed) setError(errorText(caught));
      } finally {
        running = false;
        if (again && !disposed) {
          again = false;
          schedule();
        }
      }
    };
    let dueAtMs = Number.POSITIVE_INFINITY;
    // A refresh within `delayMs`; an earlier one already due stays (lifecycle changes come
    // quickly, allocation counts at most once a second).
    const schedule = (delayMs = refreshDebounceMs) => {
      const atMs = Date.now() + delayMs;
      if (timer !== undefined && dueAtMs <= atMs) return;
      clearTimeout(timer);
      dueAtMs = atMs;
      timer = setTimeout(() => {
        timer = undefined;
        dueAtMs = Number.POSITIVE_INFINITY;
        void load();
      }, delayMs);
    };
    const removeNotify = rpc.on('notify', (params) => {
      const event = params as ChecksumRow & { type: string };
      if (event.type === 'checksum_state' || event.type === 'checksum_progress') {
        const { type: _type, previous: _previous, ...row } = event as ChecksumRow & { type: string; previous?: string };
        setListing((current) => ({ ...current, checksums: mergeChecksum(current.checksums, row) }));
        if (needsValue(row)) fetchValue(row.uuid);
        return;
      }
      if (event.type === 'checksum_preempted' || event.type.startsWith('copy_')) return;
      if (event.type === 'lvol_changed' && (event as { change?: string }).change === 'clusters') schedule(allocationRefreshMs);
      else schedule(); // bdev, lvstore or lvol created, deleted or changed
    });
    void rpc.call('notify_subscribe').then(() => load(), (caught: unknown) => setError(errorText(caught)));
    return () => {
      disposed = true;
      clearTimeout(timer);
      removeNotify();
      void rpc.call('notify_unsubscribe').catch(() => undefined);
    };
  }, [rpc]);
  return { listing, error };
}

function Volumes({ rpc, onInspect }: { rpc: DashboardRpc; onInspect: (actorId: string) => void }) {
  const { listing, error } = useListing(rpc);
  return <VolumesView rpc={rpc} listing={listing} error={error} onInspect={onInspect} />;
}
