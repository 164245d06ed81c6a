// Counts turns of the event loop (a chain of setImmediate callbacks) while some work runs: a test
// of work done "in slices" asserts the loop turned in between, not how long anything took.
export function countEventLoopTurns(): { stop(): number } {
  let turns = 0;
  let counting = true;
  const tick = (): void => {
    turns++;
    if (counting) setImmediate(tick);
  };
  setImmediate(tick);
  return {
    stop: () => {
      counting = false;
      return turns;
    },
  };
}
