// `npm run bench` loads the TypeScript through this hook rather than tsx: tsx compiles with
// esbuild's keepNames, which wraps every named closure in a call to Object.defineProperty. The
// `lvnode` the user runs is the esbuild bundle without it (scripts/build-cli.mjs), and on the
// create path those calls were ~5-10% of the CPU, so figures taken under tsx understate the node.
// Same compiler, same target, no keepNames: the code measured is the code that ships.
import { register } from 'node:module';

register('./loaderHooks.mjs', import.meta.url);
