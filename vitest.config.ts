// Test runner settings: the whole suite runs with `npm test` and ends with a one-line summary.
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    reporters: ['default', './test/summaryReporter.ts'],
    pool: 'forks',
    // Structured logs of the nodes under test would drown the report; warnings and errors still show.
    env: { LVNODE_LOG_LEVEL: process.env.LVNODE_LOG_LEVEL ?? 'warn' },
  },
});
