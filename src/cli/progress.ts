// The terminal's checksum progress line: a pure renderer of one checksum status, and a throttled
// writer that redraws it in place on a TTY (carriage return, erase to end of line).
import { formatEta, formatPercent, formatRate, progressBar } from '../dashboard/format.ts';

/** The checksum status fields the CLI reads (the shape of `bdev_lvol_get_checksum_status`). */
export interface ChecksumStatusView {
  state: 'idle' | 'queued' | 'computing' | 'stopping' | 'storing' | 'aborted' | 'done' | 'failed';
  mode?: 'whole' | 'range' | null;
  clusters_done: number;
  clusters_total: number;
  rate_bytes_per_sec: number;
  eta_sec: number | null;
  queue_position: number | null;
  will_resume?: boolean;
  reason?: string;
  error?: string;
}

const barWidthDefault = 24;

/** The clusters part of a line: "12/32 clusters". */
function clustersText(status: ChecksumStatusView): string {
  return `${status.clusters_done}/${status.clusters_total} clusters`;
}

/**
 * One line for a checksum in progress or ended, without a newline:
 * `lvs0/snap  [######------------------]  25.0%  8/32 clusters  32.0 MiB/s  ETA 3 s`.
 */
export function renderChecksumLine(label: string, status: ChecksumStatusView, barWidth = barWidthDefault): string {
  const percent = formatPercent(status.clusters_done, status.clusters_total);
  const bar = progressBar(status.clusters_done, status.clusters_total, barWidth);
  const range = status.mode === 'range' ? ' (range)' : '';
  switch (status.state) {
    case 'idle':
      return `${label}${range}  starting`;
    case 'queued':
      return `${label}${range}  queued${status.queue_position === null ? '' : ` (position ${status.queue_position})`}`;
    case 'computing':
      return `${label}${range}  ${bar}  ${percent}  ${clustersText(status)}  ${formatRate(status.rate_bytes_per_sec)}  ETA ${formatEta(status.eta_sec)}`;
    case 'stopping':
      return `${label}${range}  ${bar}  ${percent}  ${clustersText(status)}  stopping`;
    case 'storing':
      return `${label}${range}  ${bar}  ${percent}  ${clustersText(status)}  storing`;
    case 'done':
      return `${label}${range}  done  ${clustersText(status)}`;
    case 'aborted':
      return `${label}${range}  aborted at ${percent} (${clustersText(status)}): ${status.reason ?? 'stopped'}${status.will_resume ? ' (will resume)' : ''}`;
    case 'failed':
      return `${label}${range}  failed: ${status.error ?? 'unknown error'}`;
  }
}

/** Cuts a line to fit a terminal of `columns` (one column spare, so it never wraps). */
export function fitToColumns(line: string, columns: number | undefined): string {
  if (columns === undefined || columns < 2 || line.length < columns) return line;
  return `${line.slice(0, columns - 2)}…`;
}

/** Where the progress line goes: process.stderr on a TTY. */
export interface ProgressOutput {
  write(text: string): unknown;
  readonly columns?: number | undefined;
}

const carriageReturnEraseLine = '\r\x1b[K';

/** Redraws at most this often: fast enough to look live, slow enough not to flood a terminal. */
export const progressRedrawIntervalMs = 250;

/**
 * A line redrawn in place. `update` draws at once when the last draw is older than the interval,
 * else keeps the newest text for a timer; `clear` erases it (before the result is printed).
 */
export class ProgressLine {
  private lastDrawMs = Number.NEGATIVE_INFINITY;
  private pendingText: string | null = null;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private drawn = false;

  constructor(
    private readonly output: ProgressOutput,
    private readonly intervalMs = progressRedrawIntervalMs,
  ) {}

  update(text: string): void {
    const waitMs = this.lastDrawMs + this.intervalMs - Date.now();
    if (waitMs <= 0 && this.timer === null) {
      this.draw(text);
      return;
    }
    this.pendingText = text;
    this.timer ??= setTimeout(() => {
      this.timer = null;
      const pending = this.pendingText;
      this.pendingText = null;
      if (pending !== null) this.draw(pending);
    }, Math.max(0, waitMs));
  }

  /** Erases the line and drops any redraw still due. */
  clear(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    this.pendingText = null;
    if (this.drawn) this.output.write(carriageReturnEraseLine);
    this.drawn = false;
  }

  /** Replaces the line with a final one that stays (ends with a newline). */
  finish(text: string): void {
    this.clear();
    this.output.write(`${fitToColumns(text, this.output.columns)}\n`);
  }

  private draw(text: string): void {
    this.lastDrawMs = Date.now();
    this.drawn = true;
    this.output.write(`${carriageReturnEraseLine}${fitToColumns(text, this.output.columns)}`);
  }
}
