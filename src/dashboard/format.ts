// Formatting shared by the browser dashboard and the terminal (`lvnode rpc`, `lvnode status`).
// Pure functions, no DOM and no Node APIs: both bundles import them, and unit tests pin them.

const binaryUnits = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];

/** 1536 -> "1.5 KiB"; three significant digits, binary units. */
export function formatBytes(bytes: number | bigint): string {
  let value = Number(bytes);
  if (!Number.isFinite(value) || value < 0) return '–';
  let unit = 0;
  while (value >= 1024 && unit < binaryUnits.length - 1) {
    value /= 1024;
    unit++;
  }
  if (unit === 0) return `${value} B`;
  const digits = value >= 100 ? 0 : value >= 10 ? 1 : 2;
  return `${value.toFixed(digits)} ${binaryUnits[unit]}`;
}

/** Bytes per second -> "412 MiB/s"; "–" when nothing moved. */
export function formatRate(bytesPerSec: number): string {
  if (!Number.isFinite(bytesPerSec) || bytesPerSec <= 0) return '–';
  return `${formatBytes(bytesPerSec)}/s`;
}

/** Seconds -> "42 s", "3 min 05 s", "2 h 07 min", "3 d 4 h"; "–" when unknown. */
export function formatDuration(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds) || seconds < 0) return '–';
  const whole = Math.round(seconds);
  if (whole < 60) return `${whole} s`;
  const minutes = Math.floor(whole / 60);
  if (minutes < 60) return `${minutes} min ${String(whole % 60).padStart(2, '0')} s`;
  const hours = Math.floor(minutes / 60);
  if (hours < 24) return `${hours} h ${String(minutes % 60).padStart(2, '0')} min`;
  return `${Math.floor(hours / 24)} d ${hours % 24} h`;
}

/** An ETA as the node reports it (`eta_sec`, null while unknown). */
export function formatEta(etaSec: number | null | undefined): string {
  return etaSec === null || etaSec === undefined ? '–' : formatDuration(etaSec);
}

/**
 * An exact unsigned 64-bit value (a checksum) as `{ hex, decimal }`. Accepts a bigint (exact
 * parsers), a decimal string, or a number only when it is a safe integer: a rounded double
 * would print a wrong checksum, so that is refused rather than shown.
 */
export function formatU64(value: bigint | number | string): { hex: string; decimal: string } {
  let exact: bigint;
  if (typeof value === 'bigint') exact = value;
  else if (typeof value === 'number') {
    if (!Number.isSafeInteger(value)) throw new RangeError(`${value} is not an exact integer`);
    exact = BigInt(value);
  } else {
    if (!/^[0-9]+$/.test(value)) throw new RangeError(`${value} is not an unsigned integer`);
    exact = BigInt(value);
  }
  if (exact < 0n || exact >= 1n << 64n) throw new RangeError(`${exact} is outside 0..2^64-1`);
  return { hex: `0x${exact.toString(16).padStart(16, '0')}`, decimal: exact.toString(10) };
}

/** done / total as a percentage with one decimal ("37.5%"); 100% only when really done. */
export function formatPercent(done: number, total: number): string {
  if (!(total > 0)) return '–';
  const text = Math.min(100, (done / total) * 100).toFixed(1);
  // 99.96% rounds to "100.0": shown as 99.9 until the last cluster is really done.
  return `${text === '100.0' && done < total ? '99.9' : text}%`;
}

/** A text progress bar for terminals: "[#########-----------]". */
export function progressBar(done: number, total: number, width = 30): string {
  const fraction = total > 0 ? Math.min(1, Math.max(0, done / total)) : 0;
  const filled = Math.round(fraction * width);
  return `[${'#'.repeat(filled)}${'-'.repeat(width - filled)}]`;
}
