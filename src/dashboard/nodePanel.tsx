// The Node view: node_get_stats every two seconds, as numbers and as charts of the last minutes.
import { useEffect, useState } from 'preact/hooks';
import { formatRate } from './format.ts';
import { DashboardRpc, RpcCallError } from './rpc.ts';
import { type MethodRate, type Sample, methodRates, pushSample, sparklinePoints } from './series.ts';
import type { NodeStats } from './types.ts';

const pollMs = 2000;
const historyMax = 150; // five minutes at one sample per two seconds

export function NodePanel({ rpc }: { rpc: DashboardRpc }) {
  const [stats, setStats] = useState<NodeStats | null>(null);
  const [rates, setRates] = useState<MethodRate[]>([]);
  const [history, setHistory] = useState<Sample[]>([]);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    let previous: { atMs: number; stats: NodeStats } | undefined;
    let disposed = false;
    const poll = async () => {
      try {
        const current = { atMs: Date.now(), stats: await rpc.call<NodeStats>('node_get_stats') };
        if (disposed) return;
        const perMethod = methodRates(previous, current);
        setStats(current.stats);
        setRates(perMethod);
        if (previous) {
          setHistory((old) =>
            pushSample(
              old,
              {
                atMs: current.atMs,
                requestsPerSec: perMethod.reduce((sum, row) => sum + row.perSec, 0),
                loopDelayP99Ms: current.stats.event_loop_delay_ms?.p99 ?? 0,
                checksumBytesPerSec: current.stats.checksums.rate_bytes_per_sec,
              },
              historyMax,
            ),
          );
        }
        previous = current;
        setError(null);
      } catch (caught) {
        if (!disposed) setError(caught instanceof RpcCallError ? caught.text : String(caught));
      }
    };
    void poll();
    const timer = setInterval(() => void poll(), pollMs);
    return () => {
      disposed = true;
      clearInterval(timer);
    };
  }, [rpc]);

  if (!stats) return <p class="muted">{error ?? 'Reading node_get_stats…'}</p>;
  const latest = history[history.length - 1];
  return (
    <section class="node" aria-label="node">
      {error ? <p class="error">{error}</p> : null}
      <div class="cards">
        <Card title="requests/s" value={latest ? latest.requestsPerSec.toFixed(1) : '…'} series={history.map((sample) => sample.requestsPerSec)} />
        <Card title="event-loop delay p99" value={`${(stats.event_loop_delay_ms?.p99 ?? 0).toFixed(3)} ms`} series={history.map((sample) => sample.loopDelayP99Ms)} />
        <Card title="checksum read rate" value={formatRate(stats.checksums.rate_bytes_per_sec)} series={history.map((sample) => sample.checksumBytesPerSec)} />
        <Card title="connections" value={String(stats.connections ?? '–')} />
        <Card
          title="checksum walks"
          value={`${stats.background.running} running · ${stats.background.queued} queued`}
          detail={Object.entries(stats.checksums.by_state)
            .map(([state, count]) => `${state} ${count}`)
            .join(' · ')}
        />
        {stats.verify_policy ? <VerifyPolicyCard policy={stats.verify_policy} /> : null}
        <Card
          title="event loop"
          value={`${Math.round((stats.event_loop_utilization ?? 0) * 100)}% busy`}
          detail={`delay p50 ${(stats.event_loop_delay_ms?.p50 ?? 0).toFixed(3)} ms · max ${(stats.event_loop_delay_ms?.max ?? 0).toFixed(3)} ms · up ${stats.uptime_sec ?? 0} s`}
        />
      </div>
      <BackgroundOptions rpc={rpc} />
      <table class="methods" aria-label="requests per method">
        <thead>
          <tr>
            <th scope="col">method</th>
            <th scope="col">req/s</th>
            <th scope="col">calls</th>
            <th scope="col">errors</th>
            <th scope="col">p50 ms</th>
            <th scope="col">p99 ms</th>
          </tr>
        </thead>
        <tbody>
          {rates.map((row) => (
            <tr key={row.method}>
              <th scope="row">{row.method}</th>
              <td class="num">{row.perSec.toFixed(1)}</td>
              <td class="num">{row.calls}</td>
              <td class="num">{row.errors}</td>
              <td class="num">{row.p50Ms.toFixed(3)}</td>
              <td class="num">{row.p99Ms.toFixed(3)}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}

/** Scheduled verification at a glance: overdue snapshots turn the card red. */
function VerifyPolicyCard({ policy }: { policy: NonNullable<NodeStats['verify_policy']> }) {
  const overdue = policy.enabled && policy.overdue > 0;
  return (
    <div class={overdue ? 'card overdue' : 'card'} aria-label="verify policy">
      <h3>verify policy</h3>
      <p class="figure">{policy.enabled ? (overdue ? `${policy.overdue} overdue` : `${policy.due} due`) : 'off'}</p>
      <p class="muted">{policy.enabled ? `${policy.running} verifying · ${policy.snapshots_with_checksums} with checksums · ${policy.state}` : 'node_set_verify_policy turns it on'}</p>
    </div>
  );
}

function Card({ title, value, detail, series }: { title: string; value: string; detail?: string; series?: number[] }) {
  return (
    <div class="card">
      <h3>{title}</h3>
      <p class="figure">{value}</p>
      {detail ? <p class="muted">{detail}</p> : null}
      {series && series.length > 1 ? (
        <svg class="spark" viewBox="0 0 220 40" preserveAspectRatio="none" role="img" aria-label={`${title}, last ${series.length} samples`}>
          <polyline points={sparklinePoints(series, 220, 38)} />
        </svg>
      ) : null}
    </div>
  );
}

interface Options {
  max_concurrent_checksums: number;
  checksum_rate_mib_per_sec: number;
}

/** The scheduler's settings (SPEC §6.6): how many walks at once, and their read rate cap. */
function BackgroundOptions({ rpc }: { rpc: DashboardRpc }) {
  const [options, setOptions] = useState<Options | null>(null);
  const [concurrency, setConcurrency] = useState('');
  const [rate, setRate] = useState('');
  const [result, setResult] = useState<{ kind: 'ok' | 'error'; text: string } | null>(null);
  const load = () =>
    rpc.call<Options>('node_get_background_options').then((current) => {
      setOptions(current);
      setConcurrency(String(current.max_concurrent_checksums));
      setRate(String(current.checksum_rate_mib_per_sec));
    });
  useEffect(() => {
    void load().catch(() => undefined);
  }, [rpc]);
  if (!options) return null;
  return (
    <form
      class="card background-options"
      noValidate
      aria-label="background options"
      onSubmit={(event) => {
        event.preventDefault();
        rpc.call('node_set_background_options', { max_concurrent_checksums: Number(concurrency), checksum_rate_mib_per_sec: Number(rate) }).then(
          () => {
            setResult({ kind: 'ok', text: 'saved (kept across restarts)' });
            void load();
          },
          (caught: unknown) => setResult({ kind: 'error', text: caught instanceof RpcCallError ? caught.text : String(caught) }),
        );
      }}
    >
      <h3>background checksums</h3>
      <label>
        at most <input type="number" min="1" step="1" aria-label="Concurrent checksums" value={concurrency} onInput={(event) => setConcurrency((event.target as HTMLInputElement).value)} /> at once
      </label>{' '}
      <label>
        read rate cap <input type="number" min="0" step="any" aria-label="Checksum rate cap in MiB/s" value={rate} onInput={(event) => setRate((event.target as HTMLInputElement).value)} /> MiB/s (0 = none)
      </label>{' '}
      <button type="submit">Apply</button>
      {result ? (
        <span class={`result ${result.kind}`} role={result.kind === 'error' ? 'alert' : 'status'}>
          {result.text}
        </span>
      ) : null}
    </form>
  );
}
