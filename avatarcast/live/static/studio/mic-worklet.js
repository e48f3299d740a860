// Microphone capture for the studio: hands the page 20 ms blocks of the input (first channel) at the context's
// rate. While a test tone is armed, the microphone is replaced by silence and 300 ms tone bursts (1 kHz), so the
// mic-to-viewer latency can be timed without a loudspeaker in front of the microphone.
class MicCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.block = Math.round(sampleRate * 0.02);
    this.buf = new Float32Array(this.block);
    this.n = 0;
    this.testMode = false;
    this.toneLeft = 0;
    this.phase = 0;
    this.port.onmessage = (e) => {
      if (e.data.test !== undefined) this.testMode = !!e.data.test;
      if (e.data.tone) this.toneLeft = Math.round(e.data.tone * sampleRate);
    };
  }

  process(inputs) {
    const input = inputs[0] && inputs[0][0];
    const len = input ? input.length : 128;
    for (let i = 0; i < len; i++) {
      let v = input && !this.testMode ? input[i] : 0;
      if (this.toneLeft > 0) {
        v = 0.3 * Math.sin(this.phase);
        this.phase += (2 * Math.PI * 1000) / sampleRate;
        this.toneLeft--;
      }
      this.buf[this.n++] = v;
      if (this.n === this.block) {
        this.port.postMessage(this.buf, [this.buf.buffer]);
        this.buf = new Float32Array(this.block);
        this.n = 0;
      }
    }
    return true;
  }
}
registerProcessor("mic-capture", MicCapture);
