// The dashboard's entry point (bundled by src/transport/dashboardAssets.ts when the node starts).
import { render } from 'preact';
import { App } from './app.tsx';
import './styles.css';

const root = document.getElementById('app')!;
root.textContent = ''; // the "Loading…" placeholder: Preact appends to what is there
render(<App />, root);
