// Structured logs: one JSON line per event on stderr (SPEC §8). LVNODE_LOG_LEVEL picks the threshold.
const levels = { debug: 10, info: 20, warn: 30, error: 40, silent: 100 } as const;
export type LogLevel = Exclude<keyof typeof levels, 'silent'>;

export type LogThreshold = LogLevel;
// Set at run time by log_set_print_level (SPDK's RPC); until then LVNODE_LOG_LEVEL decides.
let thresholdOverride: LogThreshold | undefined;

function threshold(): number {
  if (thresholdOverride !== undefined) return levels[thresholdOverride];
  const configured = process.env.LVNODE_LOG_LEVEL as keyof typeof levels | undefined;
  return levels[configured ?? 'info'] ?? levels.info;
}

export function setLogThreshold(level: LogThreshold): void {
  thresholdOverride = level;
}

/** The level below which lines are dropped now. */
export function logThreshold(): LogThreshold {
  const value = threshold();
  return (['debug', 'info', 'warn', 'error'] as const).find((level) => levels[level] >= value) ?? 'error';
}

export function log(level: LogLevel, msg: string, fields: Record<string, unknown> = {}): void {
  if (levels[level] < threshold()) return;
  const line = JSON.stringify({ time: new Date().toISOString(), level, msg, ...fields }, (_key, value: unknown) =>
    typeof value === 'bigint' ? value.toString() : value,
  );
  process.stderr.write(`${line}\n`);
}
