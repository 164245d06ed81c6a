// Test runner settings: the whole suite runs with `npm test` and ends with a one-line summary.
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    reporters: ['default', './test/summaryReporter.ts'],
    pool: 'forks',
  },
});
